"""The :class:`BleManager`: the adapters (:class:`~edge.ble.adapter_pool.AdapterPool`: one
allow-list watcher per adapter, presence, placement, wedge recovery) and one supervisor per
bound device."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from edge.ble.adapter_pool import AdapterPool, AuditFn
from edge.ble.link import cancel_and_wait
from edge.ble.ports import (
    AdapterControl,
    BindingLike,
    ClientFactory,
    DeviceRegistry,
    IntakeSink,
    ScannerFactory,
)
from edge.ble.profiles import normalize_address
from edge.ble.scanner import AllowListWatcher
from edge.ble.state import NEEDS_PAIRING, DeviceState
from edge.ble.supervisor import GLUCOSE_POLL_S, DeviceSupervisor
from edge.clock import Clock
from edge.config import BleConfig
from edge.log import REDACTOR, get_logger

log = get_logger("edge.ble.supervisor")


#: the audit action for a device that lost its bond (subject: its device hash)
NEEDS_PAIRING_ACTION = "device.needs_pairing"


class BleManager:
    """Runs the adapters' watchers and one supervisor per bound device.

    ``scanner_factory`` / ``client_factory`` serve every adapter (bleak doubles have none);
    ``scanners_for`` / ``clients_for`` make them per adapter (bleak's real backend:
    ``bluez={"adapter": "hciN"}``). ``adapter_control`` follows BlueZ's adapters and
    power-cycles wedged ones (None: every configured adapter is taken as present, none is
    power-cycled). ``audit(action, subject)`` writes to the vault's audit chain.
    """

    def __init__(
        self,
        config: BleConfig,
        vault: DeviceRegistry,
        sink: IntakeSink,
        *,
        scanner_factory: ScannerFactory,
        client_factory: ClientFactory,
        clock: Clock,
        local_tz: tzinfo | None,
        rng: random.Random | None = None,
        glucose_poll_s: float = GLUCOSE_POLL_S,
        scanners_for: Callable[[str], ScannerFactory] | None = None,
        clients_for: Callable[[str], ClientFactory] | None = None,
        adapter_control: AdapterControl | None = None,
        audit: AuditFn | None = None,
    ) -> None:
        self._config = config
        self._glucose_poll_s = glucose_poll_s
        self._vault = vault
        self._sink = sink
        self._clock = clock
        self._local_tz = local_tz or datetime.now().astimezone().tzinfo or UTC
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not secrecy
        self._supervisors: dict[str, tuple[DeviceSupervisor, asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._refresh_lock = asyncio.Lock()
        self.counters: Counter[str] = Counter()
        self._unknown_reported = 0
        self.adapters = AdapterPool(
            config,
            scanners_for=scanners_for or (lambda _name: scanner_factory),
            clients_for=clients_for or (lambda _name: client_factory),
            control=adapter_control,
            clock=clock,
            counters=self.counters,
            audit=audit,
            on_up=self._adapter_up,
        )

    def _adapter_up(self, _name: str) -> None:
        """An adapter appeared (a dongle plugged back in): a device that lost its bond on
        another adapter may hold one there, so it is tried now, not at its next rare retry."""
        for sup, _task in self._supervisors.values():
            if sup.bond.lost:
                sup.bond.repaired()

    @property
    def watcher(self) -> AllowListWatcher:
        """The first configured adapter's allow-list watcher."""
        return self.adapters.lanes[self.adapters.order[0]].watcher

    async def run(self) -> None:
        """Supervise every bound device until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                tg.create_task(self.adapters.run(), name="ble-adapters")
                tg.create_task(self._report_unknown(), name="ble-unknown")
                await self.refresh()
                await asyncio.Event().wait()
            finally:
                self._tg = None
                for _, task in list(self._supervisors.values()):
                    task.cancel()
                self._supervisors.clear()

    async def refresh(self) -> None:
        """Re-read the bindings: start supervisors for new ones, stop removed or changed ones."""
        async with self._refresh_lock:
            bindings = list(await self._vault.bindings())
            wanted: dict[str, BindingLike] = {}
            for b in bindings:
                try:
                    wanted[normalize_address(b.address)] = b
                except ValueError:
                    continue
            self.adapters.set_allowed(wanted)
            for address, (sup, task) in list(self._supervisors.items()):
                now_bound = wanted.get(address)
                if (now_bound is None or now_bound.kind != sup.kind
                        or now_bound.patient != sup.patient):
                    del self._supervisors[address]
                    await cancel_and_wait(task)
                    self.adapters.release(address)
                    log.info("ble.supervisor_stopped", address=address)
                elif sup.bond.lost:
                    sup.bond.repaired()  # `edge pair` again re-reads the list: try it now
            tg = self._tg
            if tg is None:
                return
            for address, b in wanted.items():
                if address in self._supervisors:
                    continue
                sup = DeviceSupervisor(
                    b,
                    config=self._config,
                    registry=self._vault,
                    sink=self._sink,
                    placement=self.adapters,
                    clock=self._clock,
                    local_tz=self._local_tz,
                    rng=self._rng,
                    counters=self.counters,
                    glucose_poll_s=self._glucose_poll_s,
                    on_needs_pairing=self._needs_pairing,
                )
                task = tg.create_task(self._guard(sup), name="ble-supervisor")
                self._supervisors[address] = (sup, task)
                log.info("ble.supervisor_started", address=address, kind=b.kind)

    async def _guard(self, sup: DeviceSupervisor) -> None:
        # A bug in one supervisor must not take the TaskGroup (and every other device) down.
        while True:
            try:
                await sup.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters["supervisor_crash"] += 1
                log.error("ble.supervisor_crashed", address=sup.address,
                          error=type(exc).__name__)
                await self._clock.sleep(self._config.reconnect_cap_s)

    async def _report_unknown(self) -> None:
        # Unknown devices are counted as a number only; forward the count to intake's refusals.
        while True:
            await self._clock.sleep(self._config.scan_seconds)
            try:
                await self.flush_unknown()
            except Exception as exc:  # a count must never take the BLE part down
                log.warning("ble.unknown_count_failed", error=type(exc).__name__)

    async def flush_unknown(self) -> None:
        """Report new unknown-device sightings to intake as ``unknown_device`` refusals."""
        total = self.adapters.unknown_sightings
        delta = total - self._unknown_reported
        if delta > 0:
            self._unknown_reported = total
            self.counters["unknown_device"] += delta
            log.info("ble.unknown_devices", n=delta)
            await self._sink.refuse("unknown_device", delta)

    def _needs_pairing(self, sup: DeviceSupervisor) -> None:
        # once per episode (edge.ble.bond); the device only by its keyed hash
        self.counters[NEEDS_PAIRING] += 1
        device = REDACTOR.device_hash(sup.address)
        log.warning("ble.needs_pairing", device=device, kind=sup.kind)
        self.adapters.audit_later(NEEDS_PAIRING_ACTION, device)

    def adapter_stats(self) -> dict[str, dict[str, object]]:
        """Per configured adapter: present, devices on it, power-cycles (``edge status``)."""
        return self.adapters.stats()

    def device_states(self) -> dict[str, DeviceState]:
        """Each bound device's state and last seen, by address (for ``edge status``)."""
        return {a: sup.state for a, (sup, _) in self._supervisors.items()}

    def supervisor(self, address: str) -> DeviceSupervisor | None:
        """The supervisor of ``address`` (tests wait on its state with ``wait_until``)."""
        entry = self._supervisors.get(normalize_address(address))
        return entry[0] if entry else None
