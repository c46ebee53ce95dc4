"""``clinic serve`` and ``clinic tokens``: uvicorn over TLS 1.2+ with the [web] certificate,
and bearer tokens for the FHIR API."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys

import uvicorn

from clinic import keys
from clinic.config import ClinicConfig
from clinic.db.connect import connect
from clinic.errors import ConfigError
from clinic.keys import KeyRing
from clinic.web import auth
from clinic.web.app import build_app
from edge.log import configure_logging


def listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("web.listen", ["web.listen: must be host:port — fix: e.g. "
                                         "\"127.0.0.1:8443\""])
    return host.strip("[]") or "127.0.0.1", int(port)


def make_server(cfg: ClinicConfig, ring: KeyRing, **overrides: object) -> uvicorn.Server:
    """A configured (not yet running) HTTPS server; TLS below 1.2 is refused."""
    web = cfg.web
    problems = [f"web.{k}: {p} does not exist — fix: create it or correct the path"
                for k, p in (("tls_cert", web.tls_cert), ("tls_key", web.tls_key))
                if not p.is_file()]
    if problems:
        raise ConfigError("web TLS files missing", problems)
    host, port = listen_address(web.listen)
    config = uvicorn.Config(
        build_app(cfg, ring, **overrides), host=host, port=port,
        ssl_certfile=str(web.tls_cert), ssl_keyfile=str(web.tls_key),
        proxy_headers=False, server_header=False, access_log=False, log_config=None,
        timeout_graceful_shutdown=3, lifespan="off")
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return uvicorn.Server(config)


def serve_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    configure_logging(cfg.log.level, cfg.log.format, stream=sys.stderr)
    server = make_server(cfg, keys.load(cfg.keys))
    host, port = listen_address(cfg.web.listen)
    logging.getLogger("clinic.web").warning("serving https://%s:%d/", host, port)
    server.run()
    return 0


def tokens_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    from clinic.cli.commands import _actor  # the CLI's actor name

    with connect(cfg.db.dsn) as conn:
        if args.sub == "create":
            token = auth.create_token(conn, args.username, _actor(),
                                      expires_days=args.expires_days)
            print(f"token for {args.username} (shown once; store it safely):")
            print(token)
        elif args.sub == "revoke":
            auth.revoke_token(conn, args.token_id, _actor())
            print(f"token {args.token_id}: revoked")
        else:
            for i, u, c, e, r in auth.list_tokens(conn):
                state = f"revoked {r:%Y-%m-%d}" if r else (
                    f"expires {e:%Y-%m-%d}" if e else "no expiry")
                print(f"{i}\t{u}\tcreated {c:%Y-%m-%d}\t{state}")
    return 0
