"""Link drops, malformed notifications, implausible values, an unknown device advertising and a
device that refuses pairing: the daemon keeps running and the counts show in `edge status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.harness import E2E, obs_patient, running

SCENARIO = """
seed = 11
description = "e2e faults"

[[devices]]
kind = "hr"
name = "SIM-HR-GOOD"

[[devices]]
kind = "hr"
name = "SIM-HR-DROP"
[devices.faults]
drop_link_after_notifications = 3
drop_link_times = 0

[[devices]]
kind = "hr"
name = "SIM-HR-TRUNC"
[devices.faults]
malformed = "truncated"
malformed_every = 2

[[devices]]
kind = "hr"
name = "SIM-HR-400"
[devices.faults]
implausible = true

[[devices]]
kind = "hr"
name = "SIM-HR-STRANGER"

[[devices]]
kind = "glucose"
name = "SIM-GLU-NOPAIR"
[devices.faults]
pairing_refused = "rejected"
"""


def test_faults_are_counted_and_the_daemon_keeps_running(tmp_path: Path) -> None:
    scenario = tmp_path / "faults.toml"
    scenario.write_text(SCENARIO)
    with E2E(tmp_path / "rig", scenario=str(scenario)) as e:
        e.grant("patient-a")
        e.grant("patient-b")
        e.pair("SIM-HR-GOOD", "patient-a")
        e.pair("SIM-HR-DROP", "patient-b")
        e.pair("SIM-HR-TRUNC", "patient-b")
        e.pair("SIM-HR-400", "patient-b")
        drop_addr = e.address("SIM-HR-DROP")
        with running(e) as gw:
            # a device that refuses to bond, while the daemon runs
            refused = e.edge("pair", e.address("SIM-GLU-NOPAIR"), "--patient", "patient-b",
                             check=False, timeout=90)
            assert refused.returncode != 0
            assert gw.proc.poll() is None

            def counted(s: dict[str, Any]) -> bool:
                r = s["refusals"]
                drop = next(d for d in s["devices"] if d["address"] == drop_addr)
                return bool(r["malformed"] >= 2 and r["heart_rate_out_of_range"] >= 2
                            and r["unknown_device"] >= 1 and drop["disconnects"] >= 2
                            and drop["connects"] >= 3)
            status = e.wait_status(gw, counted, timeout=60)
            assert status["healthy"] is True
            assert status["parts"]["ble"]["restarts"] == 0

            # and the good strap still gets through
            before = sum(1 for o in e.observations() if obs_patient(o) == "patient-a")
            e.wait_for_obs(
                lambda o: sum(1 for x in o if obs_patient(x) == "patient-a") >= before + 3)
            # the refused device was never bound
            devices = {d["address"] for d in gw.status()["devices"]}
            assert e.address("SIM-GLU-NOPAIR") not in devices
            assert e.address("SIM-HR-STRANGER") not in devices
