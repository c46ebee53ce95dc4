"""Consent revoked mid-stream: nothing more of that patient reaches the broker, their pending
readings are purged, and the audit shows it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.e2e.harness import E2E, obs_patient, running


def test_revoking_consent_mid_stream(tmp_path: Path) -> None:
    with E2E(tmp_path / "rig", devices="hr:2") as e:
        e.grant("patient-a")
        e.grant("patient-b")
        e.pair("SIM-HR-1", "patient-a")
        e.pair("SIM-HR-2", "patient-b")
        with running(e) as gw:
            e.wait_for_obs(lambda o: min(sum(1 for x in o if obs_patient(x) == p)
                                         for p in ("patient-a", "patient-b")) >= 3)
            revoke_started = datetime.now(UTC)
            out = e.edge("consent", "revoke", "patient-b").stdout
            assert "in the running daemon" in out
            seen_b = sum(1 for o in e.observations() if obs_patient(o) == "patient-b")
            seen_a = sum(1 for o in e.observations() if obs_patient(o) == "patient-a")

            # patient-b's strap keeps streaming: refused at the gate, counted
            e.wait_status(gw, lambda s: s["refusals"]["no_consent"] >= 3)
            e.wait_for_obs(
                lambda o: sum(1 for x in o if obs_patient(x) == "patient-a") >= seen_a + 3)
            late = [o for o in e.observations() if obs_patient(o) == "patient-b"][seen_b:]
            # nothing measured after the revoke began was forwarded
            for o in late:
                at = datetime.fromisoformat(o["resource"]["effectiveDateTime"])
                assert at < revoke_started, "a reading of a revoked patient was forwarded"
            consents = json.loads(e.edge("consent", "list", "--json").stdout)
            b = next(c for c in consents if c["patient"] == "patient-b")
            assert b["revoked_at"] is not None
            e.quiesce(gw, ["SIM-HR-1", "SIM-HR-2"])

        rows = e.vault_rows()
        assert rows and all(p == "patient-a" for *_, p in rows), "patient-b purged"
        audit = [json.loads(line) for line in
                 e.edge("audit", "tail", "-n", "50", "--json").stdout.splitlines()]
        revoked = [a for a in audit if a["action"] == "consent.revoked"]
        assert len(revoked) == 1 and revoked[0]["subject"] == "patient-b"
        assert revoked[0]["actor"].startswith("control:uid:")
        # after the revoke, the gateway's status counts the refusals persistently
        status = json.loads(e.edge("status", "--json").stdout)
        assert status["source"] == "vault"
        assert status["refusals"]["no_consent"] >= 3
