"""A blood-glucose meter: Glucose 0x1808 with a record store and the RACP server, Current Time
0x1805 (the meter's own, skewed, local clock), Battery, Device Information.

Every Glucose characteristic needs an encrypted link: before pairing, reads fail NotAuthorized
and writes / subscriptions NotPermitted, as on a real meter. Stored records go out only on an
RACP request, as measurement (+ context) notifications paced on the clock, followed by the RACP
response indication.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from edge.clock import Clock
from firmware_sim import encoders as enc
from firmware_sim.devices import racp
from firmware_sim.devices.base import Char, Service, SimDevice
from firmware_sim.devices.common import Battery, DeviceInfo, device_information_service
from firmware_sim.encoders import GlucoseContext
from firmware_sim.faults import FaultPlan
from firmware_sim.model.contract import PeripheralError, Security, SimErrorCode, uuid16

GLUCOSE_SERVICE = uuid16(0x1808)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)
#: seconds between two records stamped while the clock stands still (one strip takes longer)
MIN_RECORD_GAP_S = 30
CURRENT_TIME_SERVICE = uuid16(0x1805)
CURRENT_TIME = uuid16(0x2A2B)

UNITS = ("mg/dL", "mmol/L")
MG_PER_MMOL = Decimal("18.0156")
#: low battery, malfunction, sample size, strip insertion, strip type, high-low,
#: temperature, general fault, time fault
DEFAULT_FEATURES = 0x037F


@dataclass(frozen=True)
class GlucoseRecord:
    """One stored measurement, as the meter knows it."""

    sequence: int
    #: meter-local time, no zone
    base_time: datetime
    concentration: Decimal | None
    unit: str = "mg/dL"
    time_offset: int | None = 0
    sample_type: int = enc.TYPE_CAPILLARY_PLASMA
    location: int = enc.LOCATION_FINGER
    status: int | None = None
    context: GlucoseContext | None = None

    def measurement_bytes(self, **override: Any) -> bytes:
        """The 0x2A18 value of this record (``override`` goes to the encoder)."""
        kwargs: dict[str, Any] = {
            "time_offset": self.time_offset,
            "concentration": self.concentration,
            "unit": self.unit,
            "sample_type": self.sample_type,
            "location": self.location,
            "status": self.status,
            "context_follows": self.context is not None,
        }
        kwargs.update(override)
        return enc.glucose_measurement(self.sequence, self.base_time, **kwargs)

    def context_bytes(self) -> bytes | None:
        """The 0x2A34 value, if the record has a context."""
        return None if self.context is None else enc.glucose_context(self.sequence, self.context)


def mg_dl(value: Decimal | int | float | str, unit: str) -> Decimal:
    """A value in mg/dL expressed in ``unit`` (mmol/L rounded to one decimal, as meters do)."""
    v = Decimal(str(value))
    if unit == "mmol/L":
        return (v / MG_PER_MMOL).quantize(Decimal("0.1"))
    return v.quantize(Decimal(1))


class GlucoseMeter(SimDevice):
    """A simulated glucose meter. Options are checked by the scenario loader."""

    kind = "glucose"

    def __init__(
        self,
        *,
        name: str,
        address: str,
        address_type: str = "public",
        clock: Clock,
        rng: random.Random,
        faults: FaultPlan | None = None,
        history: int = 24,
        first_sequence: int | None = None,
        unit: str = "mg/dL",
        context: bool = True,
        hi_lo: bool = True,
        control_solution: bool = True,
        clock_skew_minutes: int | None = None,
        utc_offset_minutes: int = 60,
        time_offset: int | None = 0,
        new_record_every: float = 0.0,
        record_interval: float = 0.02,
        delete_supported: bool = True,
        features: int = DEFAULT_FEATURES,
        battery: int | None = None,
        rssi: int | None = None,
        serial: str | None = None,
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}")
        if history < 0:
            raise ValueError("history must be >= 0")
        self.unit = unit
        self.context_enabled = context
        self.clock_skew_minutes = (
            clock_skew_minutes
            if clock_skew_minutes is not None
            else rng.choice([-1, 1]) * rng.randint(3, 14)
        )
        self.utc_offset_minutes = utc_offset_minutes
        self.time_offset = time_offset
        self.new_record_every = new_record_every
        self.record_interval = record_interval
        self.delete_supported = delete_supported
        self.features = features
        self.battery = Battery(battery if battery is not None else rng.randint(40, 100))
        self.info = DeviceInfo.simulated(
            rng, model="SIM-BGM-30", firmware="1.07", serial=serial, prefix="GM"
        )
        self._records: list[GlucoseRecord] = []
        self._next_sequence = (
            first_sequence if first_sequence is not None else rng.randint(1, 400)
        ) & 0xFFFF
        self._since_new = 0.0
        self._procedure: asyncio.Task[None] | None = None
        self._abort_requested = False
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.measurement = Char(GLUCOSE_MEASUREMENT, frozenset({"notify"}), Security.ENCRYPTED)
        self.context_char = Char(GLUCOSE_CONTEXT, frozenset({"notify"}), Security.ENCRYPTED)
        self.racp = Char(
            RACP, frozenset({"write", "indicate"}), Security.ENCRYPTED, on_write=self._racp_write
        )
        super().__init__(
            name=name,
            address=address,
            address_type=address_type,
            clock=clock,
            rng=rng,
            faults=faults,
            rssi=rssi if rssi is not None else -rng.randint(55, 80),
        )
        self._seed_history(history, hi_lo=hi_lo, control_solution=control_solution)
        if self.faults.reset_sequence:
            self._fault_installed(self.faults)

    # ------------------------------------------------------------------ GATT

    def _build_services(self) -> list[Service]:
        chars = [self.measurement]
        if self.context_enabled:
            chars.append(self.context_char)
        chars += [
            Char(
                GLUCOSE_FEATURE,
                frozenset({"read"}),
                Security.ENCRYPTED,
                on_read=lambda: enc.uint16(self.features),
            ),
            self.racp,
        ]
        cts = Service(
            CURRENT_TIME_SERVICE,
            [Char(CURRENT_TIME, frozenset({"read"}), on_read=lambda: enc.current_time(self.now()))],
        )
        return [
            Service(GLUCOSE_SERVICE, chars),
            cts,
            self.battery.service(),
            device_information_service(self.info),
        ]

    def _advertised_uuids(self) -> tuple[str, ...]:
        return (GLUCOSE_SERVICE,)

    # ------------------------------------------------------------------ the store

    @property
    def records(self) -> list[GlucoseRecord]:
        """The stored records, oldest first (a copy)."""
        return list(self._records)

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def now(self) -> datetime:
        """The meter's local clock: zone offset plus its skew, no zone, whole seconds."""
        t = self.clock.now() + timedelta(minutes=self.utc_offset_minutes + self.clock_skew_minutes)
        return t.replace(tzinfo=None, microsecond=0)

    def add_glucose_record(
        self,
        concentration: Decimal | int | float | str | None = None,
        *,
        unit: str | None = None,
        base_time: datetime | None = None,
        time_offset: int | str | None = "default",
        sample_type: int = enc.TYPE_CAPILLARY_PLASMA,
        location: int = enc.LOCATION_FINGER,
        status: int | None = None,
        context: GlucoseContext | dict[str, Any] | None = None,
        mg_dl_value: Decimal | int | float | str | None = None,
    ) -> int:
        """Store a new measurement and return its sequence number. ``concentration`` is in
        ``unit`` (default: the meter's); ``mg_dl_value`` converts from mg/dL instead. Without
        either, a plausible value is drawn from the meter's RNG."""
        unit = unit or self.unit
        if concentration is None:
            mg = mg_dl_value if mg_dl_value is not None else self.rng.randint(75, 190)
            value: Decimal | None = mg_dl(mg, unit)
        else:
            value = Decimal(str(concentration))
        if isinstance(context, dict):
            context = _context_from_dict(context)
        seq = self._next_sequence
        if base_time is None:
            # A measurement takes a strip and some seconds: a real meter never stamps two
            # records with the same time, even when the simulated clock stands still.
            base_time = self.now()
            if self._records and base_time <= self._records[-1].base_time:
                base_time = self._records[-1].base_time + timedelta(seconds=MIN_RECORD_GAP_S)
        self._records.append(
            GlucoseRecord(
                sequence=seq,
                base_time=base_time,
                concentration=value,
                unit=unit,
                time_offset=self.time_offset if time_offset == "default" else time_offset,  # type: ignore[arg-type]
                sample_type=sample_type,
                location=location,
                status=status,
                context=context if self.context_enabled else None,
            )
        )
        self._next_sequence = (seq + 1) & 0xFFFF
        return seq

    def _seed_history(self, count: int, *, hi_lo: bool, control_solution: bool) -> None:
        rng = self.rng
        t = self.now()
        times = []
        for _ in range(count):
            t -= timedelta(minutes=rng.randint(150, 720), seconds=rng.randint(0, 59))
            times.append(t)
        times.reverse()
        specials: dict[int, str] = {}
        if count >= 20:
            if hi_lo:
                specials[count // 4] = "hi"
                specials[count // 2] = "lo"
            if control_solution:
                specials[(3 * count) // 4] = "control"
        for i, when in enumerate(times):
            special = specials.get(i)
            ctx = None
            if self.context_enabled and special is None and i % 2 == 0:
                ctx = self._random_context()
            if special == "hi":
                self.add_glucose_record(
                    mg_dl_value=600, base_time=when, status=enc.STATUS_RESULT_HIGH
                )
            elif special == "lo":
                self.add_glucose_record(
                    mg_dl_value=20, base_time=when, status=enc.STATUS_RESULT_LOW
                )
            elif special == "control":
                self.add_glucose_record(
                    mg_dl_value=rng.randint(110, 130),
                    base_time=when,
                    sample_type=enc.TYPE_CONTROL_SOLUTION,
                    location=enc.LOCATION_CONTROL_SOLUTION,
                )
            else:
                meal_bump = rng.choice([0, 0, 40, 70])
                self.add_glucose_record(
                    mg_dl_value=rng.randint(78, 130) + meal_bump,
                    base_time=when,
                    sample_type=enc.TYPE_CAPILLARY_WHOLE_BLOOD
                    if i % 3
                    else enc.TYPE_CAPILLARY_PLASMA,
                    location=enc.LOCATION_FINGER if i % 5 else enc.LOCATION_ALTERNATE_SITE,
                    context=ctx,
                )

    def _random_context(self) -> GlucoseContext:
        rng = self.rng
        meal = rng.choice([1, 2, 3, 4, 5])
        carbs = rng.random() < 0.5
        return GlucoseContext(
            carbohydrate_id=rng.choice([1, 2, 3, 4]) if carbs else None,
            carbohydrate_grams=Decimal(rng.randint(10, 90)) if carbs else None,
            meal=meal,
            tester=1,
            health=rng.choice([1, 5, 15]),
            hba1c_percent=Decimal(rng.randint(50, 80)).scaleb(-1) if rng.random() < 0.2 else None,
        )

    def _fault_installed(self, plan: FaultPlan) -> None:
        if plan.reset_sequence:
            # a meter whose counter restarted (battery change, firmware reset): renumber from 1
            self._records = [
                dataclasses.replace(r, sequence=i + 1) for i, r in enumerate(self._records)
            ]
            self._next_sequence = len(self._records) + 1
            # one-shot: keep the rest of the plan
            self.fault_state.plan = dataclasses.replace(plan, reset_sequence=False)

    # ------------------------------------------------------------------ behaviour

    async def tick(self) -> None:
        await super().tick()
        if self.battery.elapse(self.tick_seconds):
            self._emit(self.battery.char, enc.uint8(self.battery.level))
        if self.new_record_every > 0:
            self._since_new += self.tick_seconds
            if self._since_new >= self.new_record_every:
                self._since_new = 0.0
                self.add_glucose_record()

    def _link_lost(self) -> None:
        if self._procedure is not None and not self._procedure.done():
            self._procedure.cancel()
        self._procedure = None
        self._abort_requested = False

    @property
    def procedure_running(self) -> bool:
        return self._procedure is not None and not self._procedure.done()

    async def _racp_write(self, value: bytes, with_response: bool) -> None:
        if not self.racp.cccd:
            raise PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x81)
        is_abort = bool(value) and value[0] == enc.RACP_ABORT
        if self.procedure_running and not is_abort:
            raise PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x80)
        decision = racp.decide(
            value, [r.sequence for r in self._records], delete_supported=self.delete_supported
        )
        if decision.action is racp.Action.ABORT:
            if self.procedure_running:
                if self.faults.racp_abort_unsuccessful:
                    self._indicate_soon(
                        enc.racp_response(enc.RACP_ABORT, enc.RSP_ABORT_UNSUCCESSFUL)
                    )
                else:
                    self._abort_requested = True  # the running report answers the abort
                return
            code = (
                enc.RSP_ABORT_UNSUCCESSFUL
                if self.faults.racp_abort_unsuccessful
                else enc.RSP_SUCCESS
            )
            self._start(self._respond(enc.racp_response(enc.RACP_ABORT, code)))
            return
        if decision.action is racp.Action.REPORT:
            chosen = [self._records[i] for i in decision.selected]
            self._start(self._report(chosen))
            return
        if decision.action is racp.Action.DELETE:
            gone = set(decision.selected)
            self._records = [r for i, r in enumerate(self._records) if i not in gone]
        self._start(self._respond(decision.response))

    def _start(self, coro: Any) -> None:
        self._abort_requested = False
        self._procedure = asyncio.get_running_loop().create_task(coro)

    def _indicate_soon(self, value: bytes) -> None:
        async def later() -> None:
            await self.clock.sleep(self.record_interval)
            self._emit(self.racp, value)

        task = asyncio.get_running_loop().create_task(later())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _respond(self, value: bytes) -> None:
        await self.clock.sleep(self.record_interval)
        if self._abort_requested:
            value = enc.racp_response(enc.RACP_ABORT, enc.RSP_SUCCESS)
        self._emit(self.racp, value)

    async def _report(self, chosen: list[GlucoseRecord]) -> None:
        plan = self.faults
        if plan.out_of_order_records:
            chosen = list(reversed(chosen))
        if plan.duplicate_records:
            chosen = [r for r in chosen for _ in (0, 1)]
        interrupt = plan.racp_interrupt_after_records
        for sent, record in enumerate(chosen):
            if not await self._report_goes_on():
                return
            if interrupt is not None and sent >= interrupt:
                self._emit(
                    self.racp, enc.racp_response(enc.RACP_REPORT, enc.RSP_PROCEDURE_NOT_COMPLETED)
                )
                return
            self._emit(self.measurement, self._measurement_value(record))
            ctx = record.context_bytes()
            if ctx is not None and self._connected:
                self._emit(self.context_char, ctx)
        if await self._report_goes_on():
            self._emit(self.racp, enc.racp_response(enc.RACP_REPORT, enc.RSP_SUCCESS))

    async def _report_goes_on(self) -> bool:
        """Wait one record interval; False if the report ends there (the link went, or an
        abort came, which is answered here)."""
        await self.clock.sleep(self.record_interval)
        if not self._connected:
            return False
        if self._abort_requested:
            self._emit(self.racp, enc.racp_response(enc.RACP_ABORT, enc.RSP_SUCCESS))
            return False
        return True

    def _measurement_value(self, record: GlucoseRecord) -> bytes:
        override: dict[str, Any] = {}
        if self.faults.implausible:
            override.update(concentration=Decimal(900), unit="mg/dL")
        kind = self.fault_state.malform_this_measurement()
        if kind == "reserved_flags":
            override["reserved_bits"] = 0b111
        elif kind == "sfloat_nan":
            override["concentration_raw"] = enc.SFLOAT_NAN
        elif kind == "sfloat_nres":
            override["concentration_raw"] = enc.SFLOAT_NRES
        value = record.measurement_bytes(**override)
        if kind == "truncated":
            value = value[:-1]
        return value

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            records=len(self._records),
            next_sequence=self._next_sequence,
            clock_skew_minutes=self.clock_skew_minutes,
            battery=self.battery.level,
        )
        return d


_CONTEXT_FIELDS = {f.name for f in dataclasses.fields(GlucoseContext)}
_DECIMAL_FIELDS = {"carbohydrate_grams", "medication_amount", "hba1c_percent"}


def _context_from_dict(d: dict[str, Any]) -> GlucoseContext:
    unknown = set(d) - _CONTEXT_FIELDS
    if unknown:
        raise ValueError(
            f"unknown context fields {sorted(unknown)}; known: {sorted(_CONTEXT_FIELDS)}"
        )
    fields: dict[str, Any] = {
        k: Decimal(str(v)) if k in _DECIMAL_FIELDS and v is not None else v for k, v in d.items()
    }
    return GlucoseContext(**fields)
