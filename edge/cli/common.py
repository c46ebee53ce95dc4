"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys

from edge.config import GatewayConfig, resolve_config_path
from edge.config_env import load_checked


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """Load and fully check the config named by ``--config`` / ``$EDGE_CONFIG`` / default."""
    return load_checked(resolve_config_path(args.config))


def print_json(obj: object) -> None:
    """One JSON document on stdout."""
    json.dump(obj, sys.stdout, default=str)
    sys.stdout.write("\n")


def admin_actor() -> str:
    """The audit actor for a command run by hand: ``admin:<user>`` (uid when it has no name)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"admin:{name}"
