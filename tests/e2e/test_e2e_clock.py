"""The hub clock through a running ``edge run``.

libfaketime (LD_PRELOAD) gives the daemon alone a wrong wall clock that the test changes at run
time through its timestamp file; its monotonic clock stays the real one (as on a Pi, whose
CLOCK_MONOTONIC does not jump when NTP steps the wall clock). ``[clock] source = "flag-file"``
stands in for timesyncd's flag. The test process, the simulator and the broker keep the true
time, so what the daemon forwards is checked against ``time.time()`` taken here.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import E2E, Gateway, obs_id, obs_kind, running

METER = "SIM-GLU-C"
STRAP = "SIM-HR-1"
#: how far the meter's clock is ahead of the true time (it keeps UTC, as the daemon does here)
METER_SKEW_MIN = 7
#: the meter's records, as hours before now on its own clock
RECORD_AGES_H = (5, 3, 1)
#: a corrected time may be off by the meter clock's whole seconds and the status poll's lag,
#: never by more than this
SLACK_S = 3.0
OFFSETS_S = {"-90d": -90 * 86400, "-3h": -3 * 3600, "+0": 0, "+1h": 3600}


def libfaketime() -> Path:
    """Debian's libfaketime.so.1 (its multiarch directory differs between amd64 and arm64)."""
    listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True,
                            check=False).stdout.splitlines()
    candidates = [Path(p) for p in listed if p.endswith("/libfaketime.so.1")]
    candidates += sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    for path in candidates:
        if path.is_file():
            return path
    raise AssertionError("libfaketime.so.1 not found — fix: apt-get install faketime "
                         "(`make setup` installs it)")


@dataclass
class DaemonClock:
    """The daemon's wall clock (libfaketime's timestamp file) and the NTP flag file."""

    dir: Path

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def flag(self) -> Path:
        return self.dir / "synchronised"

    @property
    def rc(self) -> Path:
        return self.dir / "faketimerc"

    def set_offset(self, spec: str) -> None:
        """The daemon's wall clock is now ``spec`` (e.g. ``-90d``) from the true time. Replaced
        atomically: libfaketime re-reads the file at every clock call."""
        tmp = self.rc.with_suffix(".tmp")
        tmp.write_text(spec + "\n")
        os.replace(tmp, self.rc)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(libfaketime()),
            "FAKETIME_TIMESTAMP_FILE": str(self.rc),
            "FAKETIME_NO_CACHE": "1",
            # Without this libfaketime moves CLOCK_MONOTONIC with the offset too, and the
            # corrections (true time from monotonic time) would be meaningless. 0.9.10 reads
            # both spellings; its README documents the first, older releases the second.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "TZ": "UTC",
        }

    def toml(self) -> str:
        return f'[clock]\nsource = "flag-file"\nflag_file = "{self.flag}"\n'


def when(text: str) -> float:
    """A FHIR/ISO instant as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def clock_of(status: dict[str, Any]) -> dict[str, Any]:
    clock: dict[str, Any] = status["intake"]["clock"]
    return clock


def log_event(gw: Gateway, name: str) -> dict[str, Any]:
    for event in gw.log_events():
        if event.get("event") == name:
            return event
    raise AssertionError(f"no {name} in the daemon's log:\n{gw.log_text()[-3000:]}")


def heart_rate_times(obs: list[dict[str, Any]]) -> list[float]:
    """The effective times of the heart-rate Observations (each also its ``issued``: a strap
    sends no time, so a heart rate's time is when the hub received it)."""
    times = []
    for o in obs:
        if obs_kind(o) == "heart_rate":
            res = o["resource"]
            assert res["effectiveDateTime"] == res["issued"], res
            times.append(when(res["effectiveDateTime"]))
    return times


def nothing_lost(e: E2E, obs: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """Every reading the daemon accepted is in the vault, delivered, and arrived; none was
    refused for an unknown time (the daemon has stopped)."""
    rows = e.vault_rows()
    assert rows and all(delivered for _, _, delivered, _ in rows)
    assert {r[0] for r in rows} == {obs_id(o) for o in obs}
    intake = final["intake"]
    assert len(rows) == sum(intake["received"].values()) - intake["duplicates"]
    assert final["refusals"].get("unknown_time", 0) == 0


def add_meter(e: E2E) -> list[datetime]:
    """A meter with only the records added here; their times on its own clock (UTC +
    skew, whole seconds)."""
    e.sim_ctl("add", "glucose", "history=0", "utc_offset_minutes=0",
              f"clock_skew_minutes={METER_SKEW_MIN}", "--name", METER)
    meter_now = (datetime.now(UTC).replace(tzinfo=None, microsecond=0)
                 + timedelta(minutes=METER_SKEW_MIN))
    times = [meter_now - timedelta(hours=h) for h in RECORD_AGES_H]
    for t in times:
        e.sim_ctl("glucose", METER, f"base_time={t.isoformat()}", "mg_dl_value=104")
    return times


@pytest.mark.parametrize("saved", ["-90d", "-3h"])
def test_a_hub_booted_with_an_old_saved_time_holds_readings_then_forwards_them_at_true_times(
    tmp_path: Path, saved: str,
) -> None:
    """-90d: a Pi back after months in a drawer (its TLS peers look "not yet valid" until the
    step, so the uplink is down too); -3h: the uplink is up, and still nothing is forwarded
    while the clock is unsynchronised."""
    clock = DaemonClock(tmp_path / "clock")
    clock.set_offset(saved)  # and no flag: NTP has not synchronised yet
    offset_s = OFFSETS_S[saved]
    uplink_up = saved == "-3h"
    with E2E(tmp_path / "rig", devices="hr:1", clock_toml=clock.toml()) as e:
        e.grant("patient-a")
        meter_times = add_meter(e)
        e.pair(STRAP, "patient-a")
        e.pair(METER, "patient-a")
        t0 = time.time()
        with running(e, env=clock.env()) as gw:
            # libfaketime is in force: the daemon's own log times and its view of the meter's
            # clock are off by the saved offset (else this test would prove nothing)
            ready = when(log_event(gw, "daemon.ready")["timestamp"])
            assert t0 + offset_s - SLACK_S <= ready <= time.time() + offset_s + SLACK_S

            def unsynced(s: dict[str, Any]) -> bool:
                return bool(s["intake"]["received"].get("glucose", 0) >= len(RECORD_AGES_H)
                            and s["vault"]["held"] >= len(RECORD_AGES_H) + 3
                            and (not uplink_up or s["uplink"]["state"] == "connected"))
            status = e.wait_status(gw, unsynced, timeout=90)
            meter_offset = log_event(gw, "ble.meter_clock")["offset_s"]
            assert abs(meter_offset - (METER_SKEW_MIN * 60 - offset_s)) <= 2
            if uplink_up:  # more readings arrive over a live uplink, and stay
                more = status["vault"]["held"] + 3
                status = e.wait_status(gw, lambda s: s["vault"]["held"] >= more)
            else:
                assert status["uplink"]["state"] != "connected"
            assert clock_of(status)["state"] == "unsynchronised"
            assert clock_of(status)["source"] == "flag-file"
            assert status["intake"]["held_for_clock"] >= status["vault"]["held"]
            assert e.observations() == [], "forwarded while the clock was unsynchronised"
            held_heart_rates = status["vault"]["held"] - len(RECORD_AGES_H)

            # NTP steps the wall clock to the true time, then timesyncd's flag appears
            t_sync = time.time()
            clock.set_offset("+0")
            clock.flag.touch()
            e.wait_status(gw, lambda s: clock_of(s)["state"] == "synchronised"
                          and s["vault"]["held"] == 0, timeout=60)
            e.wait_for_obs(lambda obs: any(t > t_sync + SLACK_S for t in heart_rate_times(obs)),
                           timeout=60)
            e.quiesce(gw, [STRAP, METER])
            final = gw.status()
        t_end = time.time()

        obs = e.observations()
        nothing_lost(e, obs, final)
        hr = heart_rate_times(obs)
        assert all(t0 - SLACK_S <= t <= t_end + SLACK_S for t in hr), (t0, t_end, hr)
        # the held ones were placed in the window they were really received in
        assert sum(1 for t in hr if t <= t_sync + SLACK_S) >= held_heart_rates
        glucose = list({obs_id(o): o["resource"] for o in obs if obs_kind(o) == "glucose"}
                       .values())
        assert len(glucose) == len(RECORD_AGES_H)
        for res in glucose:
            assert t0 - SLACK_S <= when(res["issued"]) <= t_end + SLACK_S
        # the meter's own times, less its measured skew (never the hub's receive time)
        got = sorted(when(res["effectiveDateTime"]) for res in glucose)
        want = [(t - timedelta(minutes=METER_SKEW_MIN)).replace(tzinfo=UTC).timestamp()
                for t in meter_times]
        assert all(abs(g - w) <= SLACK_S for g, w in zip(got, want, strict=True)), (got, want)


def test_a_step_while_synchronised_holds_readings_until_the_clock_is_stable(
    tmp_path: Path,
) -> None:
    """NTP steps a synchronised clock an hour forward: from then on the hub's time is the new
    one. Readings around the step wait until a look sees no further step, then go out on the
    new time; none carries a time from the hour that never happened on this hub."""
    clock = DaemonClock(tmp_path / "clock")
    clock.set_offset("+0")
    clock.flag.touch()
    step_s = OFFSETS_S["+1h"]
    with E2E(tmp_path / "rig", devices="hr:1", clock_toml=clock.toml()) as e:
        e.grant("patient-a")
        e.pair(STRAP, "patient-a")
        t0 = time.time()
        with running(e, env=clock.env()) as gw:
            e.wait_status(gw, lambda s: clock_of(s)["state"] == "synchronised"
                          and s["uplink"]["state"] == "connected")
            e.wait_for_obs(lambda obs: len(heart_rate_times(obs)) >= 3)
            t_step = time.time()
            clock.set_offset("+1h")
            t_stepped = time.time()
            status = e.wait_status(
                gw, lambda s: clock_of(s)["steps"] >= 1 and clock_of(s)["state"] == "synchronised"
                and s["vault"]["held"] == 0, timeout=60)
            e.wait_for_obs(lambda obs: any(t > t_stepped + step_s + SLACK_S
                                           for t in heart_rate_times(obs)), timeout=60)
            e.quiesce(gw, [STRAP])
            final = gw.status()
        t_end = time.time()

        assert clock_of(final)["steps"] == 1
        assert abs(clock_of(final)["last_step_s"] - step_s) <= SLACK_S
        assert status["intake"]["held_for_clock"] >= 1, "the reading that saw the step was held"
        obs = e.observations()
        nothing_lost(e, obs, final)
        hr = heart_rate_times(obs)
        before = [t for t in hr if t0 - SLACK_S <= t <= t_step + SLACK_S]
        after = [t for t in hr
                 if t_stepped + step_s - SLACK_S <= t <= t_end + step_s + SLACK_S]
        assert before and after
        assert len(before) + len(after) == len(hr), f"a time from neither clock: {hr}"
        # the link stayed up: a repeat would mean the step expired PUBACKs in flight
        assert not [i for i, n in Counter(obs_id(o) for o in obs).items() if n > 1]
