"""Every simulated reading arrives at the admin subscriber, once by id, as valid FHIR R4; the
status shows the devices and uplink; the INFO log carries no PHI."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from tests.e2e.harness import (
    E2E,
    HUB_ID,
    obs_id,
    obs_kind,
    obs_patient,
    write_execute_is_denied_in_children,
)
from tests.support.mosquitto import subscriber


def test_every_reading_arrives_once_as_valid_fhir_and_the_log_has_no_phi(
    tmp_path: Path,
) -> None:
    with E2E(tmp_path / "rig", devices="hr:2,glucose:1") as e:
        e.grant("patient-a")
        e.grant("patient-b")
        e.pair("SIM-HR-1", "patient-a")
        e.pair("SIM-GLU-1", "patient-a")
        e.pair("SIM-HR-2", "patient-b")
        sim = e.sim_devices()
        records = int(sim["SIM-GLU-1"]["records"])
        addresses = [d["address"] for d in sim.values()]

        # a clinician identity, next to the admin (observer) subscriber of the harness
        clinician = subscriber(e.broker, e.pki, identity="clinician-1",
                               topic=f"edge/v1/{HUB_ID}/obs/patient-a",
                               client_id="clinician-1").start()

        # systemd's notify socket, and the unit's MemoryDenyWriteExecute=yes
        assert write_execute_is_denied_in_children()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(15)
        gw = e.gateway(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                            "WATCHDOG_USEC": "2000000"}, deny_write_execute=True)
        try:
            assert notify.recv(4096).startswith(b"READY=1\nSTATUS=")
            assert notify.recv(4096).startswith(b"WATCHDOG=1\nSTATUS=")

            def enough(obs: list[dict[str, Any]]) -> bool:
                kinds = Counter(obs_kind(o) for o in obs)
                pts = Counter(obs_patient(o) for o in obs if obs_kind(o) == "heart_rate")
                return kinds["glucose"] >= 1 and min(pts["patient-a"], pts["patient-b"]) >= 3
            e.wait_for_obs(enough, timeout=60)

            def meter_read(s: dict[str, Any]) -> bool:
                # every record on the meter was either stored or refused with a reason
                r = s["refusals"]
                done = s["intake"]["received"].get("glucose", 0) + r.get("control_solution", 0)
                return bool(done + r.get("glucose_out_of_range", 0) >= records)
            status = e.wait_status(gw, meter_read)
            stored_glucose = status["intake"]["received"]["glucose"]
            assert stored_glucose >= records - 3
            assert status["source"] == "daemon"
            assert status["uplink"]["state"] == "connected"
            assert status["healthy"] is True
            assert len(status["devices"]) == 3
            assert isinstance(status["cert_days_left"], float) and status["cert_days_left"] > 30
            assert set(status["refusals"]) >= {"malformed", "no_consent"}
            e.quiesce(gw, ["SIM-HR-1", "SIM-HR-2", "SIM-GLU-1"])
            pets = [notify.recv(4096) for _ in range(3)]
            assert all(p.startswith(b"WATCHDOG=1\nSTATUS=queue ") for p in pets), pets
            assert gw.stop() == 0
            rest = []
            notify.setblocking(False)  # everything it sent is queued by now
            with contextlib.suppress(BlockingIOError):
                while True:
                    rest.append(notify.recv(4096))
            assert b"STOPPING=1\nSTATUS=stopping" in rest
        finally:
            notify.close()

        rows = e.vault_rows()
        obs = e.observations()
        clinician_got = clinician.snapshot()
        clinician.stop()
        # least privilege: clinicians read nothing on the broker (the clinic service is the
        # only reader; clinicians use its web application)
        assert clinician_got == []
        ids = [obs_id(o) for o in obs]
        # no link was lost, so nothing was re-sent: each reading arrived exactly once
        assert [i for i, n in Counter(ids).items() if n > 1] == []
        assert rows and all(delivered for _, _, delivered, _ in rows)
        assert {r[0] for r in rows} == set(ids), "everything stored arrived, nothing else"
        assert sum(1 for o in obs if obs_kind(o) == "glucose") == stored_glucose
        assert sum(1 for r in rows if r[1] == "glucose") == stored_glucose
        # topics carry the pseudonym the reading belongs to; every entry is a conditional create
        for o in obs:
            assert o["topic"] == f"edge/v1/hub-e2e/obs/{obs_patient(o)}"
            assert o["request"]["ifNoneExist"].endswith(f"urn:uuid:{obs_id(o)}")
        for m in e.sub.snapshot():
            if "/obs/" in m.topic:
                assert m.content_type == "application/fhir+json"
                Bundle.model_validate(json.loads(m.payload))

        # the daemon's INFO log: no pseudonym, no device address, no reading value
        log = gw.log_text()
        assert "daemon.ready" in log
        for secret in ["patient-a", "patient-b"]:
            assert secret not in log
        for addr in addresses:
            for form in (addr, addr.replace(":", "_"), addr.lower()):
                assert form not in log
        for event in gw.log_events():
            for key in ("bpm", "mg_dl", "mmol_l", "concentration", "patient", "rr_intervals_s"):
                assert event.get(key, "[redacted]") == "[redacted]", event
        assert not re.search(r'"(?:heart_rate_bpm|valueQuantity)"', log)
