"""The human-readable ``edge status``."""

from __future__ import annotations

from edge.cli.run_cmd import format_status


def test_status_text_names_every_part() -> None:
    text = format_status({
        "source": "daemon", "queue_depth": 3, "oldest_pending_age_s": 90.0,
        "refusals": {"malformed": 2, "no_consent": 0}, "uplink": {"state": "connected"},
        "cert_days_left": 300.5, "healthy": True,
        "devices": [{"address": "AA:BB:CC:DD:EE:01", "kind": "heart_rate",
                     "state": "connected", "last_seen": "2026-03-01T08:00:00+00:00"}],
    })
    assert "from the running daemon" in text
    assert "3 pending, oldest 90 s" in text
    assert "malformed 2" in text and "no_consent" not in text
    assert "uplink:     connected" in text
    assert "300.5 days left" in text
    assert "AA:BB:CC:DD:EE:01  heart_rate  connected" in text
