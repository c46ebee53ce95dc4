"""``edge check-config``."""

from __future__ import annotations

import argparse

from edge.cli.common import config_from_args
from edge.config import GatewayConfig, load_config, resolve_config_path
from edge.config_checks import installed_problems
from edge.errors import ConfigError


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

    cfg = _checked(args)
    print("config ok")
    print(f"e2e: {describe(cfg.e2e)}")
    return 0


def _checked(args: argparse.Namespace) -> GatewayConfig:
    """The fully checked config, and what it names that is not installed (a vault directory,
    a vault key file): every problem in one run."""
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        try:  # the schema holds: add what is missing to the environment's problems
            parsed = load_config(resolve_config_path(args.config))
        except ConfigError:
            raise exc from None
        raise ConfigError(str(exc), exc.problems + installed_problems(parsed)) from exc
    problems = installed_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration", problems)
    return cfg
