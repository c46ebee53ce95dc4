"""``clinic``: argument parsing, config loading and error reporting; the work is elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clinic import config as config_mod
from clinic.cli import alerts_cmd, commands
from clinic.errors import ClinicError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clinic", description="the clinic side of edge")
    p.add_argument("--config", help="config file (else $CLINIC_CONFIG, else "
                                    "/etc/clinic/clinic.toml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-config", help="validate the config; one line per problem")
    db = sub.add_parser("db").add_subparsers(dest="sub", required=True)
    db.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    keys = sub.add_parser("keys").add_subparsers(dest="sub", required=True)
    keys.add_parser("init", help="create the E2E key pair and the data key")
    rot = keys.add_parser("rotate", help="new current keys; retired ones are kept")
    rot.add_argument("--only", choices=["e2e", "data"])
    keys.add_parser("public", help="the E2E public key (PEM) for hub installers")
    hubs = sub.add_parser("hubs").add_subparsers(dest="sub", required=True)
    for name in ("enroll", "revoke"):
        hubs.add_parser(name).add_argument("hub_id")
    hubs.add_parser("list")
    pat = sub.add_parser("patients").add_subparsers(dest="sub", required=True)
    add = pat.add_parser("add")
    add.add_argument("pseudonym")
    add.add_argument("--hub", required=True)
    add.add_argument("--display-name")
    for name in ("assign", "unassign"):
        a = pat.add_parser(name)
        a.add_argument("pseudonym")
        a.add_argument("--clinician", required=True)
    pat.add_parser("list")
    users = sub.add_parser("users").add_subparsers(dest="sub", required=True)
    ua = users.add_parser("add")
    ua.add_argument("username")
    ua.add_argument("--role", required=True, choices=["admin", "clinician", "auditor"])
    ua.add_argument("--password-file", required=True)
    for name in ("disable", "reset-mfa"):
        users.add_parser(name).add_argument("username")
    ing = sub.add_parser("ingest", help="run one ingest worker")
    ing.add_argument("--worker", default="1")
    alerts_cmd.add_parser(sub)
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    au = sub.add_parser("audit").add_subparsers(dest="sub", required=True)
    au.add_parser("verify")
    tail = au.add_parser("tail")
    tail.add_argument("-n", type=int, default=20)
    from clinic.web.cli_args import add_parsers as add_web_parsers

    add_web_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = config_mod.resolve_path(args.config)
    try:
        cfg = config_mod.load(path)
        if args.cmd == "check-config":
            config_mod.check(cfg)
            print(f"{path}: ok")
            return 0
        return commands.run(cfg, args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    except ClinicError as exc:
        print(f"clinic: {exc}", file=sys.stderr)
        return exc.exit_code
