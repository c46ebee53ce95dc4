"""A heart-rate chest strap: Heart Rate 0x180D, Battery, Device Information.

Once a second it works out the beats of that second (heart rate wandering around a resting
value, RR intervals with beat-to-beat variability), and, if the client listens, notifies a Heart
Rate Measurement. RR intervals that did not fit (MTU) or arrived while nobody listened wait in a
small backlog and go out oldest first, so a fresh subscription sees a full, MTU-capped list.
Sensor contact comes and goes; without contact there are no RR intervals.
"""

from __future__ import annotations

import math
import random
from typing import Any

from edge.clock import Clock
from firmware_sim import encoders as enc
from firmware_sim.devices.base import Char, Service, SimDevice
from firmware_sim.devices.common import Battery, DeviceInfo, device_information_service
from firmware_sim.faults import FaultPlan
from firmware_sim.model.contract import PeripheralError, SimErrorCode, uuid16

HEART_RATE_SERVICE = uuid16(0x180D)
HEART_RATE_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
HEART_RATE_CONTROL_POINT = uuid16(0x2A39)

HR_FORMATS = ("uint8", "uint16", "varying")
CONTACT_MODES = ("comes_and_goes", "always", "unsupported")

_RR_BACKLOG_MAX = 32
_ENERGY_EVERY = 10  # the profile suggests energy in every 10th measurement


class HeartRateStrap(SimDevice):
    """A simulated heart-rate strap. Options are checked by the scenario loader."""

    kind = "heart_rate"

    def __init__(
        self,
        *,
        name: str,
        address: str,
        address_type: str = "random",
        clock: Clock,
        rng: random.Random,
        faults: FaultPlan | None = None,
        resting_bpm: int | None = None,
        hr_format: str = "varying",
        energy: bool = True,
        contact: str = "comes_and_goes",
        body_location: int = 1,
        battery: int | None = None,
        mtu: int = 23,
        rssi: int | None = None,
        serial: str | None = None,
    ) -> None:
        if hr_format not in HR_FORMATS:
            raise ValueError(f"hr_format must be one of {HR_FORMATS}")
        if contact not in CONTACT_MODES:
            raise ValueError(f"contact must be one of {CONTACT_MODES}")
        self.resting_bpm = resting_bpm if resting_bpm is not None else rng.randint(56, 78)
        self.hr_format = hr_format
        self.energy_enabled = energy
        self.contact_mode = contact
        self.body_location = body_location
        self.mtu = mtu
        self.battery = Battery(battery if battery is not None else rng.randint(55, 100))
        self.info = DeviceInfo.simulated(
            rng, model="SIM-HRS-200", firmware="2.3.1", serial=serial, prefix="HR"
        )
        self.bpm = self.resting_bpm
        self.energy_j = 0.0
        self.contact_detected = True
        self._contact_lost_ticks = 0
        self._phase = rng.random() * 2 * math.pi
        self._since_beat = 0.0
        self._next_rr = 60.0 / self.bpm
        self._rr_backlog: list[int] = []
        self._measurements = 0
        self._forced_bpm: int | None = None
        self.measurement = Char(HEART_RATE_MEASUREMENT, frozenset({"notify"}))
        super().__init__(
            name=name,
            address=address,
            address_type=address_type,
            clock=clock,
            rng=rng,
            faults=faults,
            rssi=rssi if rssi is not None else -rng.randint(50, 75),
        )

    def _build_services(self) -> list[Service]:
        hr = Service(
            HEART_RATE_SERVICE,
            [
                self.measurement,
                Char(
                    BODY_SENSOR_LOCATION,
                    frozenset({"read"}),
                    on_read=lambda: enc.uint8(self.body_location),
                ),
                Char(HEART_RATE_CONTROL_POINT, frozenset({"write"}), on_write=self._control_point),
            ],
        )
        return [hr, self.battery.service(), device_information_service(self.info)]

    def _advertised_uuids(self) -> tuple[str, ...]:
        return (HEART_RATE_SERVICE,)

    async def _control_point(self, value: bytes, with_response: bool) -> None:
        if value != b"\x01":
            raise PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x80)
        self.energy_j = 0.0

    # ------------------------------------------------------------------ control

    def set_heart_rate(self, bpm: int | None) -> None:
        """Pin the heart rate to ``bpm`` (None: back to simulated variability)."""
        if bpm is not None and not 0 <= bpm <= 0xFFFF:
            raise ValueError("bpm must fit uint16")
        self._forced_bpm = bpm
        if bpm is not None:
            self.bpm = bpm

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(bpm=self.bpm, battery=self.battery.level)
        return d

    # ------------------------------------------------------------------ behaviour

    async def tick(self) -> None:
        await super().tick()
        self._step(self.tick_seconds)
        if self.battery.elapse(self.tick_seconds):
            self._emit(self.battery.char, enc.uint8(self.battery.level))
        if self.measurement.cccd:
            value = self.next_measurement()
            self._emit(self.measurement, value)
        else:
            self._measurements += 1

    def _step(self, seconds: float) -> None:
        rng = self.rng
        self._phase += seconds * 2 * math.pi / 90.0  # a slow breathing/activity wave
        if self._forced_bpm is not None:
            self.bpm = self._forced_bpm
        else:
            drift = 6 * math.sin(self._phase) + rng.gauss(0, 1.2)
            self.bpm = max(40, min(190, round(self.resting_bpm + drift)))
        if self.contact_mode == "comes_and_goes":
            if self._contact_lost_ticks > 0:
                self._contact_lost_ticks -= 1
                self.contact_detected = self._contact_lost_ticks == 0
            elif rng.random() < 0.02:
                self._contact_lost_ticks = rng.randint(2, 6)
                self.contact_detected = False
        self.energy_j = min(self.energy_j + max(0, self.bpm - 40) * 1.5 * seconds, 0xFFFF * 1000)
        if not self.contact_detected or self.bpm <= 0:
            self._rr_backlog.clear()
            self._since_beat = 0.0
            return
        self._since_beat += seconds
        while self._since_beat >= self._next_rr:
            self._since_beat -= self._next_rr
            self._rr_backlog.append(max(1, round(self._next_rr * 1024)))
            base = 60.0 / self.bpm
            self._next_rr = base * (1 + rng.gauss(0, 0.035))  # beat-to-beat variability
        del self._rr_backlog[:-_RR_BACKLOG_MAX]

    def next_measurement(self) -> bytes:
        """The next Heart Rate Measurement value (takes RR intervals from the backlog)."""
        self._measurements += 1
        plan = self.faults
        bpm = 400 if plan.implausible else self.bpm
        if self.hr_format == "uint16":
            wide = True
        elif self.hr_format == "varying":
            wide = self._measurements % 7 == 0
        else:
            wide = False
        wide = wide or bpm > 0xFF
        with_energy = self.energy_enabled and (
            self._measurements % _ENERGY_EVERY == 1 or _ENERGY_EVERY == 1
        )
        cap = enc.max_rr_intervals(mtu=self.mtu, uint16=wide, energy=with_energy)
        rr = self._rr_backlog[:cap]
        del self._rr_backlog[:cap]
        contact = None if self.contact_mode == "unsupported" else self.contact_detected
        malformed = self.fault_state.malform_this_measurement()
        value = enc.heart_rate_measurement(
            bpm,
            uint16=wide,
            contact=contact,
            energy_kj=round(self.energy_j / 1000) if with_energy else None,
            rr_1024=rr,
            reserved_bits=0b111 if malformed == "reserved_flags" else 0,
        )
        if malformed in {"truncated", "sfloat_nan", "sfloat_nres"}:
            # no SFLOAT in this characteristic: any malformation becomes a truncation
            value = value[:-1]
        return value
