"""Issue 14, "the hub trusts BLE devices too far" (4): a strap notifying at ~490 Hz was stored in
full. A per-device token bucket (``ble.heart_rate_max_hz``, ``ble.heart_rate_burst``) lets a real
strap through untouched; the excess is refused before it is queued or decoded, counted as
``rate_limited`` and never stored."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.characteristic import BleakGATTCharacteristic

from edge.ble.errors import BleOperationError
from edge.ble.hr_session import HeartRateSession
from edge.ble.link import Link
from edge.ble.ports import GattServices, NotifyCallback
from edge.ble.ratelimit import RateLimit, TokenBucket
from edge.config import BleConfig
from edge.testing import ManualClock, settle
from edge.testing.ble import FakeSink
from tests.support.ble_rig import FAST, ble_rig

pytestmark = pytest.mark.timeout(120)

STRAP = "AA:BB:CC:DD:EE:01"
#: flags 0x16 (contact detected, RR present), 72 bpm, one RR interval
NOTIFICATION = bytes.fromhex("16480004")


class NotifyingClient:
    """The part of a BleClient a heart-rate session uses; the test fires the notifications."""

    def __init__(self) -> None:
        self.callback: NotifyCallback | None = None

    @property
    def address(self) -> str:
        return STRAP

    @property
    def is_connected(self) -> bool:
        return True

    @property
    def services(self) -> GattServices:
        raise NotImplementedError

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def pair(self) -> None: ...

    async def unpair(self) -> None: ...

    async def read_gatt_char(self, char_specifier: str, /) -> bytearray:
        raise NotImplementedError

    async def write_gatt_char(
        self, char_specifier: str, data: bytes, response: bool | None = None, /
    ) -> None: ...

    async def start_notify(
        self, char_specifier: str, callback: NotifyCallback, /, *,
        bluez: BlueZNotifyArgs | None = None,
    ) -> None:
        self.callback = callback

    async def stop_notify(self, char_specifier: str, /) -> None: ...

    def notify(self) -> None:
        assert self.callback is not None
        self.callback(_CHAR, bytearray(NOTIFICATION))


_CHAR: BleakGATTCharacteristic = None  # type: ignore[assignment]  # the session ignores it


async def _stream(hz: float, seconds: float, limit: RateLimit | TokenBucket | None,
                  clock: ManualClock | None = None) -> tuple[FakeSink, int]:
    """Run a heart-rate session against a strap notifying at ``hz`` for ``seconds`` (virtual),
    then drop the link; the sink and the number of notifications sent."""
    clock = clock or ManualClock()
    client = NotifyingClient()
    dropped = asyncio.Event()
    sink = FakeSink()
    link = Link(client, dropped)
    if limit is None:  # the session's default
        session = HeartRateSession(link, address=STRAP, patient="p-1", sink=sink, clock=clock,
                                   stall_timeout_s=10.0)
    else:
        session = HeartRateSession(link, address=STRAP, patient="p-1", sink=sink, clock=clock,
                                   stall_timeout_s=10.0, rate_limit=limit)
    task = asyncio.create_task(session.run())
    while client.callback is None:
        await settle(1)
    sent = 0
    for i in range(round(hz * seconds)):
        client.notify()
        sent += 1
        clock.step(1.0 / hz)
        if i % 50 == 0:
            await settle(3)  # let the consumer hand batches to the sink
    await settle()
    dropped.set()
    with pytest.raises(BleOperationError, match="link_lost"):
        await task
    return sink, sent


async def test_a_strap_notifying_at_490_hz_is_limited_and_the_excess_counted() -> None:
    sink, sent = await _stream(490.0, 10.0, None)  # the default: 4 Hz, bursts of 8
    stored = len(sink.readings)
    assert sent == 4900
    assert stored <= 8 + 4 * 10 + 1, stored
    assert stored >= 4 * 10 - 1, "the allowed rate still gets through"
    # nothing dropped silently: every notification is stored or counted
    assert sink.refused["rate_limited"] == sent - stored
    assert sink.refused["overflow"] == 0


async def test_a_real_strap_is_never_limited() -> None:
    sink, sent = await _stream(1.0, 120.0, None)
    assert len(sink.readings) == sent == 120
    assert sink.refused["rate_limited"] == 0


async def test_the_limit_is_configurable() -> None:
    sink, sent = await _stream(10.0, 20.0, RateLimit(rate_hz=2.0, burst=1))
    assert 39 <= len(sink.readings) <= 41
    assert sink.refused["rate_limited"] == sent - len(sink.readings)


async def test_the_supervisor_applies_the_configured_limit_to_a_simulated_strap() -> None:
    config = FAST.model_copy(update={"heart_rate_max_hz": 0.5, "heart_rate_burst": 1})
    async with ble_rig("hr:1", config=config, autojump=False) as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        await rig.start()
        await rig.wait_state(strap, lambda s: s.state == "connected")
        for _ in range(60):
            await rig.clock.advance(1.0)
        stored = len(rig.sink.of_kind("heart_rate"))
        # a 1 Hz strap against a 0.5 Hz limit: about half gets through, the rest is counted
        assert 20 <= stored <= 35, stored
        strap.drop_link()
        await rig.wait_state(strap, lambda s: s.disconnects == 1)
        assert rig.sink.refused["rate_limited"] >= 20


async def test_the_limit_holds_across_reconnections() -> None:
    """The supervisor keeps one bucket per device: a strap cannot win a fresh burst by
    dropping and re-making its link."""
    clock = ManualClock()
    bucket = TokenBucket(RateLimit(rate_hz=1.0, burst=5))
    first, _ = await _stream(100.0, 1.0, bucket, clock)
    again, _ = await _stream(100.0, 1.0, bucket, clock)
    assert len(first.readings) == 5  # the burst; a second at 1 Hz has not refilled a token
    assert len(again.readings) <= 2  # no fresh burst of 5


def test_ble_config_defaults_are_well_above_a_real_strap() -> None:
    cfg = BleConfig()
    assert cfg.heart_rate_max_hz == 4.0 and cfg.heart_rate_burst == 8
    with pytest.raises(ValueError):
        BleConfig(heart_rate_max_hz=0)
    with pytest.raises(ValueError):
        BleConfig(heart_rate_burst=0)


# --- the pure bucket ----------------------------------------------------------------------


def _ticks(hz: float) -> Iterator[float]:
    return (i / hz for i in itertools.count())


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(RateLimit(rate_hz=4.0, burst=8))
    # 1000 notifications in the same instant: only the burst passes
    assert sum(bucket.allow(0.0) for _ in range(1000)) == 8
    # then 4 a second, however many are offered
    passed = sum(bucket.allow(t) for t in itertools.islice(_ticks(500.0), 1, 5001))
    assert 39 <= passed <= 41


def test_bucket_refills_up_to_the_burst_only() -> None:
    bucket = TokenBucket(RateLimit(rate_hz=1.0, burst=3))
    assert sum(bucket.allow(0.0) for _ in range(10)) == 3
    # a long quiet spell refills to the burst, not beyond
    assert sum(bucket.allow(3600.0) for _ in range(10)) == 3


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket(RateLimit(rate_hz=1.0, burst=1))
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)  # no refill from a step back
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_rate_limit_is_checked(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)
