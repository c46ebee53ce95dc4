"""The whole path with e2e on: simulator -> `edge run` ([e2e] sign+encrypt) -> mosquitto -> two
`clinic ingest` workers -> PostgreSQL. Every reading the hub delivered is stored exactly once,
and the broker's admin subscriber sees only sealed JOSE, never FHIR or a pseudonym."""

from __future__ import annotations

from pathlib import Path

from edge.testing import eventually
from edge.uplink.envelope import CONTENT_TYPE, peek_header, thumbprint
from tests.e2e.clinic_rig import clinic_rig, ingest_ids, opened_ids
from tests.e2e.harness import E2E, HUB_ID

PATIENTS = ["patient-a", "patient-b"]
# what a plaintext FHIR Bundle (or a reading of it) would show
PLAINTEXT = (b"resourceType", b"Observation", b"Bundle", b"8867-4", b"loinc", b"patient-a",
             b"patient-b", b"Patient/", b"{")


async def test_sealed_readings_are_stored_once_and_the_broker_sees_no_plaintext(
    tmp_path: Path,
) -> None:
    with clinic_rig(tmp_path / "clinic") as clinic, E2E(
        tmp_path / "rig", devices="hr:2,glucose:1", clinic_ids=ingest_ids("1", "2"),
        recipient_key=clinic.recipient_key,
    ) as e:
        kid = thumbprint(clinic.ring.e2e[clinic.ring.current_e2e])
        checked = e.edge("check-config").stdout.splitlines()
        assert f"e2e: sign+encrypt (clinic key {kid})" in checked
        clinic.configure(e.pki, e.broker.port, ["1", "2"])
        clinic.enroll(HUB_ID, PATIENTS)
        clinic.start_worker("1")
        clinic.start_worker("2")
        clinic.wait_subscribed()
        for p in PATIENTS:
            e.grant(p)
        e.pair("SIM-HR-1", "patient-a")
        e.pair("SIM-GLU-1", "patient-a")
        e.pair("SIM-HR-2", "patient-b")
        gw = e.gateway()

        await eventually(lambda: len(clinic.stored_ids()) >= 30, within_s=90,
                         what="readings stored by the clinic")
        e.quiesce(gw, ["SIM-HR-1", "SIM-HR-2", "SIM-GLU-1"])  # the hub's queue is empty
        assert gw.stop() == 0
        delivered = {rid for rid, _, done, _ in e.vault_rows() if done}
        assert len(delivered) >= 30

        def all_stored() -> bool:
            return set(clinic.stored_ids()) >= delivered

        await eventually(all_stored, within_s=60, what="every delivered reading stored")
        stored = clinic.stored_ids()
        assert len(stored) == len(set(stored)) == len(delivered)  # exactly once
        assert set(stored) == delivered
        status = clinic.status()
        assert status["observations"] == len(delivered)
        assert not any(status["rejected"].values()), status["rejected"]

        # The broker's own view (admin identity, reads everything): sealed envelopes only.
        obs_msgs = [m for m in e.sub.snapshot() if "/obs/" in m.topic]
        assert obs_msgs
        seen: set[str] = set()
        for m in obs_msgs:
            assert m.content_type == CONTENT_TYPE
            assert not any(word in m.payload for word in PLAINTEXT), m.payload[:80]
            header = peek_header(m.payload)
            assert header["kid"] == kid and header["cty"] == "JOSE"
            assert not any(p in str(header) for p in PATIENTS)
            seen.update(opened_ids(clinic, m.payload))  # and the clinic can open each one
        assert seen == delivered

        clinic.stop_workers()
        logs = clinic.log_text() + "".join(g.log_text() for g in e.gateways)
        assert not any(p in logs for p in PATIENTS)
