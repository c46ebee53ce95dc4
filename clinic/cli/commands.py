"""The subcommands: each opens what it needs, does one thing, audits it, prints a result."""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pyotp
from argon2 import PasswordHasher

from clinic import audit, keys, status
from clinic.cli import alerts_cmd
from clinic.config import ClinicConfig, check_worker
from clinic.db import registry
from clinic.db.connect import Conn, connect
from clinic.db.schema import migrate
from clinic.errors import KeyUnavailable, UsageError
from edge.log import configure_logging


def _actor() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def run(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    """Dispatch ``args`` (already parsed) with ``cfg``."""
    handler = _HANDLERS[(args.cmd, getattr(args, "sub", None))]
    return int(handler(cfg, args))


def _conn(cfg: ClinicConfig) -> Conn:
    return connect(cfg.db.dsn)


def db_migrate(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        applied = migrate(conn)
        if applied:
            audit.append(conn, _actor(), "db.migrate", "", {"versions": applied})
    print(f"applied {applied}" if applied else "schema up to date")
    return 0


def keys_init(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    try:
        keys.load(cfg.keys)
    except KeyUnavailable:
        pass
    else:
        raise UsageError("keys exist already — use `clinic keys rotate`")
    ring = keys.initial_ring()
    with _conn(cfg) as conn, conn.transaction():
        # Audited in the same transaction as the write: no unrecorded key.
        audit.append(conn, _actor(), "keys.init", "",
                     {"e2e_kid": ring.current_e2e, "data_key": ring.current_data})
        keys.save(cfg.keys, ring)
    print(f"e2e kid {ring.current_e2e}, data key {ring.current_data}")
    return 0


def keys_rotate(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    old = keys.load(cfg.keys)
    ring = keys.rotated(old, e2e=args.only in (None, "e2e"), data=args.only in (None, "data"))
    with _conn(cfg) as conn, conn.transaction():
        audit.append(conn, _actor(), "keys.rotate", "", {
            "e2e_kid": ring.current_e2e, "retired_e2e": old.current_e2e,
            "data_key": ring.current_data, "retired_data": old.current_data})
        keys.save(cfg.keys, ring)
    print(f"e2e kid {ring.current_e2e}, data key {ring.current_data} "
          f"(retired keys kept: {len(ring.e2e) - 1} e2e, {len(ring.data) - 1} data)")
    return 0


def keys_public(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    sys.stdout.write(keys.load(cfg.keys).public_pem().decode())
    return 0


def hubs_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        if args.sub == "enroll":
            registry.enroll_hub(conn, args.hub_id, _actor())
        elif args.sub == "revoke":
            registry.revoke_hub(conn, args.hub_id, _actor())
        else:
            for h in registry.list_hubs(conn):
                state = f"revoked {h.revoked_at:%Y-%m-%d}" if h.revoked_at else "enrolled"
                print(f"{h.hub_id}\t{state}")
            return 0
    print(f"hub {args.hub_id}: {'enrolled' if args.sub == 'enroll' else 'revoked'}")
    return 0


def patients_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        if args.sub == "add":
            ring = keys.load(cfg.keys)
            registry.add_patient(conn, ring, args.pseudonym, args.hub, args.display_name,
                                 _actor())
        elif args.sub in ("assign", "unassign"):
            registry.assign(conn, args.pseudonym, args.clinician, _actor(),
                            on=args.sub == "assign")
        else:
            for p, hub, who in registry.list_patients(conn):
                print(f"{p}\t{hub}\t{','.join(who) or '-'}")
            return 0
    print(f"patient {args.sub}: done")
    return 0


def users_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        if args.sub == "disable":
            registry.disable_user(conn, args.username, _actor())
            print(f"user {args.username}: disabled")
            return 0
        ring = keys.load(cfg.keys)
        secret = pyotp.random_base32()
        if args.sub == "add":
            try:
                password = Path(args.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise UsageError("--password-file cannot be read") from exc
            if len(password) < 12:
                raise UsageError("the password needs at least 12 characters")
            registry.add_user(conn, ring, args.username, args.role,
                              PasswordHasher().hash(password), secret, _actor())
        else:
            registry.reset_mfa(conn, ring, args.username, secret, _actor())
    print(pyotp.TOTP(secret).provisioning_uri(name=args.username,
                                              issuer_name=f"clinic {cfg.clinic.id}"))
    return 0


def status_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        doc = status.collect(conn)
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else status.render(doc))
    return 0


def audit_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    with _conn(cfg) as conn:
        if args.sub == "verify":
            n, broken = audit.verify(conn)
            if broken is not None:
                print(f"audit chain BROKEN at record {broken} ({n} records)")
                return 1
            print(f"audit chain intact ({n} records)")
            return 0
        for r in audit.tail(conn, args.n):
            print(f"{r.seq}\t{r.at.isoformat()}\t{r.actor}\t{r.action}\t{r.target}\t{r.detail}")
    return 0


def ingest_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    from clinic.ingest.worker import Worker  # paho and the TLS stack only for this command

    # Its own certificate, CN <clinic.id>-ingest-<NAME>, or it does not start: the broker
    # would connect it as whoever the CN names (and take over that worker's session).
    check_worker(cfg, args.worker)
    configure_logging(cfg.log.level, cfg.log.format, stream=sys.stderr)
    worker = Worker(cfg, keys.load(cfg.keys), args.worker)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    return 0


def alerts(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    return alerts_cmd.alerts_cmd(cfg, args, _actor())


def serve_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    from clinic.web.serve import serve_cmd as run_serve  # starlette/uvicorn only for this

    return run_serve(cfg, args)


def tokens_cmd(cfg: ClinicConfig, args: argparse.Namespace) -> int:
    from clinic.web.serve import tokens_cmd as run_tokens

    return run_tokens(cfg, args)


Handler = Callable[[ClinicConfig, argparse.Namespace], int]
_HANDLERS: dict[tuple[str, str | None], Handler] = {
    ("db", "migrate"): db_migrate,
    ("keys", "init"): keys_init,
    ("keys", "rotate"): keys_rotate,
    ("keys", "public"): keys_public,
    **{("hubs", s): hubs_cmd for s in ("enroll", "revoke", "list")},
    **{("patients", s): patients_cmd for s in ("add", "assign", "unassign", "list")},
    **{("users", s): users_cmd for s in ("add", "disable", "reset-mfa")},
    **{("alerts", s): alerts for s in ("list", "ack", "thresholds", "evaluate")},
    ("status", None): status_cmd,
    ("audit", "verify"): audit_cmd,
    ("audit", "tail"): audit_cmd,
    ("ingest", None): ingest_cmd,
    ("serve", None): serve_cmd,
    **{("tokens", s): tokens_cmd for s in ("create", "revoke", "list")},
}
