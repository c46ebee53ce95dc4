"""The broker is down for 30 s while the straps keep streaming: nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.harness import E2E, obs_id, running

OUTAGE_S = 30.0


def test_broker_down_for_30_s_under_load_loses_nothing(tmp_path: Path) -> None:
    with E2E(tmp_path / "rig", devices="hr:3,glucose:1", gated=True) as e:
        assert e.gate is not None
        for p in ("patient-a", "patient-b"):
            e.grant(p)
        e.pair("SIM-HR-1", "patient-a")
        e.pair("SIM-HR-2", "patient-b")
        e.pair("SIM-HR-3", "patient-b")
        e.pair("SIM-GLU-1", "patient-a")
        with running(e) as gw:
            e.wait_for_obs(lambda o: len(o) >= 10)
            e.sub.reset_subscribed()
            e.broker.stop()
            down_at = time.monotonic()
            # readings keep being committed while the broker is away
            status = e.wait_status(gw, lambda s: s["queue_depth"] >= 40, timeout=OUTAGE_S)
            assert status["uplink"]["state"] != "connected"
            e.sim_ctl("glucose", "SIM-GLU-1")
            # the outage itself is the scenario: it lasts 30 s whatever happens meanwhile
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            assert gw.proc.poll() is None, "the daemon keeps running without its broker"
            status = gw.status()
            assert status["healthy"] is True, "a broker outage is not a reason to restart"
            queued = status["queue_depth"]
            assert queued >= 60

            # back: the subscriber first (it only sees what is published after it subscribed)
            e.gate.open.clear()
            e.broker.start()
            e.sub.wait_subscribed(15)
            e.gate.open.set()
            e.wait_status(gw, lambda s: s["uplink"]["state"] == "connected", 30)
            e.quiesce(gw, ["SIM-HR-1", "SIM-HR-2", "SIM-HR-3", "SIM-GLU-1"])

        rows = e.vault_rows()
        received = {obs_id(o) for o in e.observations()}
        assert len(rows) >= queued
        assert all(delivered for _, _, delivered, _ in rows)
        missing = {r[0] for r in rows} - received
        assert not missing, f"{len(missing)} stored readings never arrived"
