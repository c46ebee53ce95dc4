"""Held readings in the real (SQCipher) vault: stored, not handed out until the hub clock is
synchronised, then handed out with corrected times — through a restart in the same boot."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from edge.intake import ConsentGate, Intake
from edge.intake.clockwatch import ClockWatch
from edge.readings import HeartRateReading
from edge.vault import Vault, schema
from edge.vault.outbox import releaser
from tests.support.clock_support import Hub
from tests.support.vault_support import vault_config, write_key


async def test_held_readings_wait_for_the_clock_and_come_out_corrected(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    hub = Hub()
    truth = {}
    vault = await Vault.open(cfg, key, clock=hub.clock)
    try:
        assert vault.schema_version == schema.CURRENT_VERSION
        await vault.grant_consent("pt-alpha", scope="vitals", actor="test")
        gate = ConsentGate(vault)
        await gate.load()
        intake = Intake(vault, gate, on_appended=lambda: None, clock=hub.clock,
                        hub_clock=hub.hub_clock)
        watch = ClockWatch(hub.hub_clock, hub.clock, releaser(vault), on_released=lambda: None)
        await watch.check_once()
        for bpm in (60, 61, 62):
            hub.clock.step(2)
            truth[bpm] = hub.true_now()
            await intake.submit([hub.strap(bpm)])
        await vault.flush()  # one in the database ...
        hub.clock.step(2)
        truth[63] = hub.true_now()
        await intake.submit([hub.strap(63)])  # ... one still in the side log
        assert await vault.next_batch(100) == []
        stats = await vault.stats()
        assert (stats.held, stats.pending) == (4, 4)
    finally:
        await vault.close()

    # the daemon restarts in the same boot; NTP then synchronises
    vault = await Vault.open(cfg, key, clock=hub.clock)
    try:
        assert await vault.next_batch(100) == []
        watch = ClockWatch(hub.hub_clock, hub.clock, releaser(vault), on_released=lambda: None)
        hub.clock.step(30)
        hub.ntp_sync()
        await watch.check_once()
        assert await vault.next_batch(100) == []  # the sync step: trusted at the next look
        hub.clock.step(10)
        released = await watch.check_once()
        assert released is not None and released.released == 4
        rows = await vault.next_batch(100, after_seq=0)
        out = [p.reading() for p in rows]
        assert len(out) == 4
        for r in out:
            assert isinstance(r, HeartRateReading) and r.clock_hold is None
            assert r.effective_time == r.received_at == truth[r.bpm]
        stats = await vault.stats()
        assert (stats.held, stats.pending) == (0, 4)
        assert stats.pending_bytes == sum(len(p.payload) for p in rows)
        # released rows come after anything handed out before: a forwarder's cursor sees them
        assert min(p.seq for p in rows) > 4
        assert await vault.mark_delivered([p.id for p in rows]) == 4
    finally:
        await vault.close()
    vault = await Vault.open(cfg, key, clock=hub.clock)
    try:
        stats = await vault.stats()
        assert (stats.pending, stats.held, stats.delivered_retained) == (0, 0, 4)
        assert truth[63] - truth[60] == timedelta(seconds=6)
    finally:
        await vault.close()
