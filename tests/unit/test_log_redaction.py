"""Logging: PHI-bearing events through the real configure_logging; nothing sensitive survives."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from edge.log import REDACTOR, Redactor, configure_logging, get_logger
from edge.readings import HeartRateReading

ADDR = "AA:BB:CC:DD:EE:F1"
ADDR2 = "12:34:56:78:9A:BC"
BLUEZ_PATH = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_F1"
PSEUDONYM = "pt-zq81x"
KEY_HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
BPM = 173
MG_DL = Decimal("123.45")
MMOL = Decimal("6.853")

SENSITIVE = [
    ADDR, ADDR.lower(), ADDR.replace(":", "_"), ADDR.replace(":", "-"), ADDR2, ADDR2.lower(),
    "AA_BB_CC", PSEUDONYM, KEY_HEX, KEY_HEX[:40], "123.45", "6.853", str(BPM),
]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {n: logging.getLogger(n).level for n in ("bleak", "dbus_fast", "paho", "asyncio")}
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.configure(**config)


def _configure(level: str = "info", fmt: str = "json") -> io.StringIO:
    out = io.StringIO()
    configure_logging(level=level, fmt=fmt, stream=out)
    # The daemon registers bound pseudonyms; so does this test.
    REDACTOR.register([PSEUDONYM])
    return out


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _without_timestamps(records: list[dict[str, Any]]) -> str:
    # Timestamps carry arbitrary digits; everything else must be clean.
    return json.dumps([{k: v for k, v in r.items() if k != "timestamp"} for r in records])


def _emit_phi() -> None:
    log = get_logger("edge.test")
    log.info("ble.connected", address=ADDR, patient=PSEUDONYM, bpm=BPM)
    log.info("intake.stored", device_id=ADDR.lower(), mg_dl=MG_DL, mmol_l=MMOL, glucose=MG_DL)
    log.info("intake.reading", reading={"bpm": BPM, "patient": PSEUDONYM},
             context={"address": ADDR2, "note": f"from {ADDR2}"})
    log.warning(f"free text: device {ADDR} of {PSEUDONYM} at {BLUEZ_PATH}")
    log.warning("ble.path", path=BLUEZ_PATH, devices=[ADDR, ADDR2])
    log.error("vault.key_rejected", detail=f"tried key {KEY_HEX}", key=KEY_HEX)
    log.info("ble.found %s", ADDR)
    log.info("intake.detail", patient_pseudonym=PSEUDONYM, glucose_mg_dl=MG_DL, hr_bpm=BPM,
             vault_key_hex=KEY_HEX)
    try:
        raise RuntimeError(f"GATT write failed on {BLUEZ_PATH} ({ADDR}) for {PSEUDONYM}")
    except RuntimeError:
        log.exception("ble.write_failed")
    # (traceback text shows source lines: keep literal values off the raising line)
    bad = {"bpm": f"{BPM}.5", "patient": PSEUDONYM}
    try:
        HeartRateReading.model_validate(bad)
    except ValidationError:
        log.exception("intake.invalid")
    bleak = logging.getLogger("bleak.backends.bluezdbus.client")
    bleak.warning("Device %s disconnected (%s)", ADDR, BLUEZ_PATH)
    try:
        raise OSError(f"[org.bluez.Error.Failed] {BLUEZ_PATH} key {KEY_HEX}")
    except OSError:
        bleak.error("connect to %s failed", ADDR, exc_info=True)


def test_no_sensitive_string_survives_at_info_and_above(restore_logging: None) -> None:
    out = _configure("info")
    _emit_phi()
    records = _lines(out)
    assert len(records) == 12
    text = _without_timestamps(records)
    for s in SENSITIVE:
        assert s not in text, f"{s!r} leaked"
        assert s.lower() not in text.lower(), f"{s!r} leaked"
    # the events themselves are still there, with their stable names
    events = [r["event"] for r in records]
    assert "ble.connected" in events
    assert "ble.write_failed" in events
    # the traceback went through redaction too, and is still useful
    (failed,) = [r for r in records if r["event"] == "ble.write_failed"]
    assert "RuntimeError: GATT write failed on" in failed["exception"]


def test_devices_show_as_a_stable_keyed_hash(restore_logging: None) -> None:
    out = _configure("info")
    _emit_phi()
    text = _without_timestamps(_lines(out))
    h1 = REDACTOR.device_hash(ADDR)
    h2 = REDACTOR.device_hash(ADDR2)
    assert re.fullmatch(r"dev-[0-9a-f]{8}", h1)
    assert h1 != h2
    # one device, one name: whatever form the address came in (keys, text, BlueZ path)
    assert h1 == REDACTOR.device_hash(ADDR.lower()) == REDACTOR.device_hash("AA_BB_CC_DD_EE_F1")
    assert text.count(h1) >= 8
    assert h2 in text
    shown = set(re.findall(r"dev-[0-9a-f]{8}", text))
    assert shown == {h1, h2}


def test_an_already_hashed_device_is_not_hashed_again(restore_logging: None) -> None:
    out = _configure("info")
    h = REDACTOR.device_hash(ADDR)
    get_logger("edge.test").info("ble.connected", device=h, address=ADDR)
    (record,) = _lines(out)
    assert record["device"] == record["address"] == h


def test_device_hash_depends_on_the_key_and_is_stable_for_one_key() -> None:
    a = Redactor(b"k" * 32)
    b = Redactor(b"k" * 32)
    c = Redactor(b"j" * 32)
    assert a.device_hash(ADDR) == b.device_hash(ADDR) == b.device_hash(ADDR.lower())
    assert a.device_hash(ADDR) != c.device_hash(ADDR)
    c.set_hash_key(b"k" * 32)
    assert c.device_hash(ADDR) == a.device_hash(ADDR)


def test_debug_is_filtered_at_info_level(restore_logging: None) -> None:
    out = _configure("info")
    get_logger("edge.test").debug("ble.raw", address=ADDR, raw="0a0b")
    logging.getLogger("bleak").debug("bleak debug %s", ADDR)
    logging.getLogger("bleak").info("bleak info %s", ADDR)  # libraries stay at WARNING
    get_logger("edge.test").info("ble.scan_started")
    assert [r["event"] for r in _lines(out)] == ["ble.scan_started"]


def test_debug_level_shows_debug_events(restore_logging: None) -> None:
    out = _configure("debug")
    get_logger("edge.test").debug("ble.raw", size=4)
    records = _lines(out)
    assert [(r["event"], r["level"]) for r in records] == [("ble.raw", "debug")]


def test_json_lines_parse_with_level_timestamp_and_event(restore_logging: None) -> None:
    out = _configure("info")
    _emit_phi()
    lines = out.getvalue().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict)
        assert {"event", "level", "timestamp"} <= set(record)
        assert record["timestamp"].endswith("Z")
        assert record["level"] in {"info", "warning", "error"}


def test_console_format_is_redacted_too(restore_logging: None) -> None:
    out = _configure("info", fmt="console")
    _emit_phi()
    text = out.getvalue()
    assert "ble.connected" in text
    # drop the leading timestamp of each line
    body = "\n".join(line.split(" ", 1)[-1] for line in text.splitlines())
    for s in SENSITIVE:
        assert s.lower() not in body.lower(), f"{s!r} leaked"


def test_registered_pseudonyms_are_bounded_and_never_rebuilt_per_grant() -> None:
    r = Redactor(b"k" * 32, capacity=100)
    r.pin(["pt-bound"])
    for i in range(4000):
        r.register([f"pt-{i:05d}"])
    # Before: one entry per registration (4,000), and a regex over all of them rebuilt each time.
    assert len(r) == 101
    assert r.scrub("pt-bound and pt-03999") == "[redacted] and [redacted]"
    assert r.scrub("pt-00000") == "pt-00000", "the least recently registered was forgotten"
    r.register(["pt-00000"])
    assert len(r) == 101 and r.scrub("pt-00000") == "[redacted]"


def test_registered_pseudonyms_are_found_inside_words_between_separators() -> None:
    r = Redactor(b"k" * 32)
    r.register(["pt-one", "p.x", "ab"])  # "ab": too short to register, as before
    assert len(r) == 2
    assert r.scrub("obs/pt-one.json, pt-one; (pt-one)") == \
        "obs/[redacted].json, [redacted]; ([redacted])"
    assert r.scrub("edge/v1/hub/obs/pt-one/x") == "edge/v1/hub/obs/[redacted]/x"
    assert r.scrub("pt-one-two q-p.x") == "[redacted]-two q-[redacted]"
    assert r.scrub("xpt-one pt-onex ab") == "xpt-one pt-onex ab"  # other words are left alone
    # hostile text stays cheap: bounded work per word
    assert r.scrub("a." * 4000) == "a." * 4000
