"""The ``serve`` and ``tokens`` arguments (argparse only: the web stack is imported when one of
them runs, not for every ``clinic`` command)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` and ``tokens`` on the ``clinic`` parser."""
    sub.add_parser("serve", help="serve the web application and FHIR API over HTTPS")
    tok = sub.add_parser("tokens", help="FHIR API bearer tokens").add_subparsers(
        dest="sub", required=True)
    cr = tok.add_parser("create", help="a new token for USERNAME (printed once)")
    cr.add_argument("username")
    cr.add_argument("--expires-days", type=float, default=None)
    rv = tok.add_parser("revoke", help="revoke a token by id (see `tokens list`)")
    rv.add_argument("token_id", type=int)
    tok.add_parser("list")
