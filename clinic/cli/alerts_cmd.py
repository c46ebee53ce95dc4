"""``clinic alerts``: list, acknowledge (with a note), per-patient thresholds, and one round of
the periodic evaluator. The web app calls the same :mod:`clinic.alerts.store` functions."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any

from clinic import keys
from clinic.alerts import evaluator, store
from clinic.alerts.rules import OVERRIDABLE, Thresholds
from clinic.config import ClinicConfig
from clinic.db.connect import connect
from clinic.errors import UsageError

#: option -> threshold name
_OPTIONS = {
    "--glucose-urgent-low": "glucose_urgent_low_mg_dl",
    "--glucose-low": "glucose_low_mg_dl",
    "--glucose-high": "glucose_high_mg_dl",
    "--hr-low": "heart_rate_low_bpm",
    "--hr-high": "heart_rate_high_bpm",
    "--hr-sustain": "heart_rate_sustain_samples",
    "--stale-after-s": "stale_after_s",
}
assert set(_OPTIONS.values()) == set(OVERRIDABLE)


def add_parser(sub: Any) -> None:
    """``clinic alerts ...`` on the top-level subparsers."""
    al = sub.add_parser("alerts", help="list, acknowledge and tune alerts").add_subparsers(
        dest="sub", required=True)
    ls = al.add_parser("list", help="unresolved alerts, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="resolved ones too")
    ls.add_argument("--patient")
    ack = al.add_parser("ack", help="acknowledge an open alert with a note")
    ack.add_argument("alert_id", type=int)
    ack.add_argument("--by", required=True, metavar="USERNAME")
    ack.add_argument("--note", required=True)
    th = al.add_parser("thresholds", help="show or override a patient's thresholds")
    th.add_argument("pseudonym")
    for opt in _OPTIONS:
        th.add_argument(opt, metavar="N")
    th.add_argument("--clear", action="store_true", help="back to the [alerts] defaults first")
    al.add_parser("evaluate", help="one round of the periodic evaluator")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def alerts_cmd(cfg: ClinicConfig, args: argparse.Namespace, actor: str) -> int:
    defaults = Thresholds.from_config(cfg.alerts)
    with connect(cfg.db.dsn) as conn:
        if args.sub == "list":
            rows = store.list_alerts(conn, keys.load(cfg.keys), include_resolved=args.all,
                                     patient=args.patient)
            if args.json:
                print(json.dumps([a.as_json() for a in rows], indent=2))
            for a in [] if args.json else rows:
                ack = f" by {a.acknowledged_by}: {a.note}" if a.acknowledged_by else ""
                print(f"{a.id}\t{a.state}\t{a.kind}\t{a.patient}\t{a.opened_at:%Y-%m-%d %H:%M}"
                      f"{ack}")
            return 0
        if args.sub == "ack":
            store.acknowledge(conn, keys.load(cfg.keys), args.alert_id, args.by, args.note,
                              _now())
            print(f"alert {args.alert_id}: acknowledged")
            return 0
        if args.sub == "thresholds":
            given = {name: _number(opt, getattr(args, name_of(opt)))
                     for opt, name in _OPTIONS.items() if getattr(args, name_of(opt)) is not None}
            if given or args.clear:
                th = store.set_thresholds(conn, args.pseudonym, given, defaults, actor, _now(),
                                          clear=args.clear)
            else:
                th = store.get_thresholds(conn, args.pseudonym, defaults)
            for name in OVERRIDABLE:
                print(f"{name} = {getattr(th, name)}")
            return 0
        result = evaluator.evaluate(conn, evaluator.Settings.from_config(cfg), _now())
        print(f"evaluated: {result.changes} alert changes, {result.purged} raw rows purged"
              if result.ran else "another evaluator is running; skipped")
        return 0


def name_of(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def _number(option: str, text: str) -> Decimal:
    try:
        v = Decimal(text)
    except InvalidOperation as exc:
        raise UsageError(f"{option} needs a number") from exc
    if not v.is_finite() or v <= 0:
        raise UsageError(f"{option} needs a positive number")
    if option == "--hr-sustain" and v != v.to_integral_value():
        raise UsageError("--hr-sustain needs a whole number of samples")
    return v
