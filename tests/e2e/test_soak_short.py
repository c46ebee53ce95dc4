"""A very short soak (``make soak``'s machinery, bounded): 8 simulated devices for 75 s with at
least one link drop, one broker restart and one malformed-notification window; nothing
accepted may be lost, the malformed notifications are refused (counted, not stored), the hub
reconnects after the broker restart, the daemon exits cleanly and no process is left over."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from soak.run import SoakConfig, run_soak, summary
from soak.schedule import Rates

pytestmark = pytest.mark.e2e

SHORT = Rates(link_drop_every_s=10, broker_restart_every_s=30, broker_min_gap_s=20,
              malformed_every_s=20, malformed_window_s=(6, 12), malformed_nth=(1, 2),
              quiet_start_s=5, quiet_end_s=10)


def children() -> set[int]:
    """Live child processes of this process (every thread's)."""
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:
            continue
    return out


def test_a_short_soak_loses_nothing_under_each_kind_of_fault(tmp_path: Path) -> None:
    before = children()
    cfg = SoakConfig(minutes=1.25, seed=5, hr=6, glucose=2, sample_every_s=10, rates=SHORT,
                     workdir=tmp_path / "soak", connect_timeout_s=120, drain_timeout_s=120)
    out = io.StringIO()
    result = run_soak(cfg, out)
    text = summary(result, cfg)
    where = f"{text}\n--- run ---\n{out.getvalue()[-4000:]}"

    assert result.ok, where
    assert result.daemon_exit == 0, where
    acc = result.accounting
    assert acc.accepted > 0, where
    assert acc.lost == 0, where
    assert acc.seen == acc.accepted == acc.intake_accepted, where
    assert acc.unknown_seen == 0, where
    for kind in ("link_drop", "broker_restart", "malformed"):
        assert result.faults[kind] >= 1, where
    # the malformed notifications reached the hub and were refused, not stored
    assert result.refusals.get("malformed", 0) >= 1, where
    # one connection at the start and at least one after each broker restart
    assert result.uplink_connections >= result.faults["broker_restart"] + 1, where
    assert result.resources.fds_start > 0, where
    assert "lost 0 " in text and "PASS" in text, where
    # the sample lines were printed as the soak went
    assert out.getvalue().count(" fds ") >= 5, where
    # every process the soak started is gone
    assert children() - before == set(), where
