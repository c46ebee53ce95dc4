"""The ``edge`` command. Each subcommand group lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from edge.errors import ConfigError, EdgeError

#: modules providing ``register(subparsers, common)``; each adds its subcommands
COMMAND_MODULES: tuple[str, ...] = (
    "edge.cli.config_cmd",
    "edge.cli.decode_cmd",
    "edge.cli.run_cmd",
    "edge.cli.ble_cmd",
    "edge.cli.uplink_cmd",
    "edge.cli.vault_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand takes ``--config``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="gateway config (default: $EDGE_CONFIG, else /etc/edge/gateway.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="edge", description="Home-care hub gateway for BLE medical devices.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Errors become one clear line per problem and an exit code; no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    except EdgeError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("EDGE_DEBUG"):
            raise
        # The message of an unexpected error may carry anything; show only its type.
        print(
            f"edge: internal error ({type(exc).__name__}); set EDGE_DEBUG=1 for details",
            file=sys.stderr,
        )
        return 1
