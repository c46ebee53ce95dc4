"""``edge check-config``."""

from __future__ import annotations

import argparse

from edge.cli.common import config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the config; exit 2 listing every problem",
    )
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from edge.uplink.sealing import describe

    cfg = config_from_args(args)
    print("config ok")
    print(f"e2e: {describe(cfg.e2e)}")
    return 0
