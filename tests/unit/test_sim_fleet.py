"""Fleets, scenarios and determinism."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_sim.devices.base import SimDevice
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import Fleet, build_fleet, parse_devices_spec
from firmware_sim.model.clock import ManualClock
from firmware_sim.model.recorder import RecordingEvents
from firmware_sim.scenario import ScenarioError, load_scenario, packaged_scenarios, parse_scenario

START = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


def test_devices_spec() -> None:
    assert parse_devices_spec("hr:2,glucose:1") == [("heart_rate", 2, {}), ("glucose", 1, {})]
    assert parse_devices_spec(" hr , glu:3 ") == [("heart_rate", 1, {}), ("glucose", 3, {})]
    with pytest.raises(ValueError, match="unknown device kind"):
        parse_devices_spec("thermometer:1")
    with pytest.raises(ValueError, match="bad device count"):
        parse_devices_spec("hr:two")


def test_devices_spec_carries_pairing_and_passkey() -> None:
    assert parse_devices_spec("glucose:2:pairing=passkey:passkey=012345,hr:pairing=just_works") == [
        ("glucose", 2, {"pairing": "passkey", "passkey": "012345"}),
        ("heart_rate", 1, {"pairing": "just_works"}),
    ]
    with pytest.raises(ValueError, match="KEY one of pairing, passkey"):
        parse_devices_spec("glucose:1:colour=red")
    fleet = build_fleet(devices="glucose:1:passkey=012345,hr:1:pairing=numeric_comparison")
    meter, strap = fleet.devices
    assert (meter.pairing.method.value, meter.pairing.passkey) == ("passkey", 12345)
    assert meter.describe()["passkey"] == "012345"
    assert (strap.pairing.method.value, strap.pairing.passkey) == ("numeric_comparison", None)
    with pytest.raises(ValueError, match="pairing: expected one of just_works, passkey"):
        build_fleet(devices="hr:1:pairing=pin")
    with pytest.raises(ValueError, match="passkey: expected up to 6 digits"):
        build_fleet(devices="glucose:1:passkey=1234567")


def test_a_passkey_device_without_a_passkey_gets_a_seed_stable_one() -> None:
    first = build_fleet(devices="glucose:2:pairing=passkey", seed=4)
    again = build_fleet(devices="glucose:2:pairing=passkey", seed=4)
    keys = [d.pairing.passkey for d in first.devices]
    assert keys == [d.pairing.passkey for d in again.devices]
    assert all(k is not None and 0 <= k <= 999_999 for k in keys)
    assert keys[0] != keys[1]


def test_scenario_pairing_keys_are_checked() -> None:
    ok = parse_scenario(
        '[[devices]]\nkind = "glucose"\npairing = "passkey"\npasskey = 123456\n'
        '[[devices]]\nkind = "hr"\npairing = "numeric_comparison"\n'
    )
    fleet = Fleet()
    ok.populate(fleet)
    assert [(d.pairing.method.value, d.pairing.passkey) for d in fleet.devices] == [
        ("passkey", 123456),
        ("numeric_comparison", None),
    ]
    with pytest.raises(ScenarioError, match="passkey: only with pairing"):
        parse_scenario('[[devices]]\nkind = "hr"\npairing = "just_works"\npasskey = 1\n')
    with pytest.raises(ScenarioError, match="pairing: expected one of"):
        parse_scenario('[[devices]]\nkind = "hr"\npairing = "pin"\n')
    with pytest.raises(ScenarioError, match="passkey: expected up to 6 digits"):
        parse_scenario('[[devices]]\nkind = "hr"\npasskey = true\n')


def test_names_and_address_kinds() -> None:
    fleet = build_fleet(devices="hr:2,glucose:2", seed=11)
    assert [d.name for d in fleet.devices] == ["SIM-HR-1", "SIM-HR-2", "SIM-GLU-1", "SIM-GLU-2"]
    for d in fleet.devices:
        top = int(d.address[:2], 16) >> 6
        if d.kind == "heart_rate":
            assert (d.address_type, top) == ("random", 0b11)  # random static
        else:
            assert d.address_type == "public"
            assert top == 0b00
    assert len({d.address for d in fleet.devices}) == 4


def test_auto_names_skip_explicit_ones_and_failures_do_not_consume_numbers() -> None:
    fleet = Fleet(seed=1)
    assert fleet.add("hr").name == "SIM-HR-1"
    with pytest.raises(ValueError):
        fleet.add("hr", hr_format="uint32")
    fleet.add("hr", name="SIM-HR-3")  # takes the second seed slot
    assert fleet.add("hr").name == "SIM-HR-4"  # slot 3's name is taken: skipped
    assert fleet.add("hr").name == "SIM-HR-5"


def test_address_type_per_scenario() -> None:
    fleet = Fleet(seed=1)
    glu = fleet.add("glucose", address_type="random", history=20)
    hr = fleet.add("hr", address_type="public")
    assert glu.address_type == "random" and int(glu.address[:2], 16) >> 6 == 0b11
    assert hr.address_type == "public" and int(hr.address[:2], 16) >> 6 == 0b00


def test_addresses_stable_per_seed() -> None:
    a = [d.address for d in build_fleet(devices="hr:3,glucose:2", seed=5).devices]
    b = [d.address for d in build_fleet(devices="hr:3,glucose:2", seed=5).devices]
    c = [d.address for d in build_fleet(devices="hr:3,glucose:2", seed=6).devices]
    assert a == b
    assert a != c


def test_get_add_remove_and_listeners() -> None:
    fleet = Fleet(seed=1)
    added: list[SimDevice] = []
    removed: list[SimDevice] = []
    fleet.on_added.append(added.append)
    fleet.on_removed.append(removed.append)
    hr = fleet.add("hr", resting_bpm=70)
    glu = fleet.add("glucose", history=20, name="KITCHEN-METER")
    assert added == [hr, glu]
    assert fleet.get(hr.address.lower()) is hr
    assert fleet.get("kitchen-meter") is glu
    with pytest.raises(KeyError):
        fleet.get("nope")
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        fleet.add("hr", bogus=1)
    with pytest.raises(ValueError, match="already in the fleet"):
        fleet.add("hr", address=hr.address)
    fleet.remove(hr.address)
    assert removed == [hr]
    assert fleet.devices == [glu]


async def test_start_runs_ticks_on_the_clock_and_stop_drops_links() -> None:
    clock = ManualClock(START)
    fleet = build_fleet(devices="hr:1", clock=clock)
    hr = fleet.devices[0]
    events = RecordingEvents()
    hr.set_events(events)
    await fleet.start()
    await hr.connect()
    await hr.start_notify(hr.services()[0].characteristics[0].handle)
    await clock.advance(5)
    assert len(events.notifications) == 5
    late = fleet.add("hr")  # added while running: ticks too
    late_events = RecordingEvents()
    late.set_events(late_events)
    await clock.advance(3)
    assert late_events.advertisement_changes == 3
    assert len(events.notifications) == 8
    await fleet.stop()
    assert events.disconnects == ["simulator-stopped"]
    await clock.advance(5)
    assert len(events.notifications) == 8
    assert clock.sleepers == 0


async def collect_first_minute(seed: int) -> list[tuple[str, int, bytes]]:
    clock = ManualClock(START)
    fleet = build_fleet(scenario=None, devices=None, seed=seed, clock=clock)
    out: list[tuple[str, int, bytes]] = []

    class Tagged(RecordingEvents):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def notify(self, handle: int, value: bytes) -> None:
            out.append((self.name, handle, value))

    for d in fleet.devices:
        d.set_events(Tagged(d.name))
    await fleet.start()
    for d in fleet.devices:
        await d.connect()
        await d.pair()
        for svc in d.services():
            for ch in svc.characteristics:
                if ch.descriptors:
                    await d.start_notify(ch.handle)
        if isinstance(d, GlucoseMeter):
            await d.write(d.racp.handle, b"\x01\x01", with_response=True)
    await clock.advance(60)
    await fleet.stop()
    return out


async def test_same_seed_same_first_minute_of_bytes() -> None:
    first = await collect_first_minute(3)
    assert first == await collect_first_minute(3)
    names = {n for n, _, _ in first}
    assert names == {"SIM-HR-1", "SIM-HR-2", "SIM-GLU-1"}
    assert len(first) > 2 * 60
    assert first != await collect_first_minute(4)


def test_packaged_scenarios_load() -> None:
    assert {"default", "faults", "fleet50"} <= set(packaged_scenarios())
    default = build_fleet()
    assert [d.kind for d in default.devices] == ["heart_rate", "heart_rate", "glucose"]
    glu = default.devices[2]
    assert isinstance(glu, GlucoseMeter) and len(glu.records) >= 20
    faults = load_scenario("faults")
    fleet = Fleet(seed=faults.seed)
    faults.populate(fleet)
    planned = {k for d in fleet.devices for k in d.faults.to_dict()}
    # every fault of the plan appears in the faults scenario (reset is applied at build)
    assert planned | {"reset_sequence", "drop_link_times"} >= {
        "connect_failures",
        "connect_failure_probability",
        "drop_link_after_notifications",
        "in_progress_on_operation",
        "malformed",
        "implausible",
        "duplicate_records",
        "out_of_order_records",
        "slow_response_seconds",
        "invisible",
        "pairing_refused",
        "racp_abort_unsuccessful",
        "racp_interrupt_after_records",
    }
    reset = fleet.get("SIM-GLU-RESET")
    assert isinstance(reset, GlucoseMeter) and reset.records[0].sequence == 1


def test_fleet50_has_fifty_distinct_devices() -> None:
    spec = load_scenario("fleet50")
    assert spec.device_count() == 50
    big = Fleet(seed=spec.seed)
    spec.populate(big)
    assert len(big) == 50
    assert len({d.address for d in big.devices}) == 50
    assert len({d.name for d in big.devices}) == 50


def test_scenario_file_and_devices_combine(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(
        'seed = 9\n[[devices]]\nkind = "glucose"\nname = "GLU-A"\naddress = "00:11:22:33:44:55"\n'
        'history = 21\nunit = "mmol/L"\n[devices.faults]\nimplausible = true\n'
    )
    fleet = build_fleet(scenario=f, devices="hr:1")
    assert fleet.seed == 9
    assert [d.name for d in fleet.devices] == ["GLU-A", "SIM-HR-1"]
    glu = fleet.get("00:11:22:33:44:55")
    assert isinstance(glu, GlucoseMeter) and glu.unit == "mmol/L" and len(glu.records) == 21
    assert glu.faults.implausible
    assert build_fleet(scenario=f, seed=2).seed == 2  # an explicit seed wins


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown key(s) ['colour']"),
        ("seed = 'x'", "seed must be an integer"),
        ("[[devices]]\ncount = 1", "missing key 'kind'"),
        ("[[devices]]\nkind = 'scale'", "devices[0].kind: unknown device kind"),
        ("[[devices]]\nkind = 'hr'\nhistory = 3", "unknown key 'history' for a heart_rate"),
        ("[[devices]]\nkind = 'hr'\nhr_format = 'uint32'", "hr_format: expected one of"),
        ("[[devices]]\nkind = 'hr'\nresting_bpm = 'fast'", "resting_bpm: expected int"),
        ("[[devices]]\nkind = 'hr'\nresting_bpm = 500", "resting_bpm: 500 outside"),
        ("[[devices]]\nkind = 'hr'\nenergy = 1", "energy: expected bool"),
        ("[[devices]]\nkind = 'glucose'\nfirst_sequence = 70000", "first_sequence: 70000 outside"),
        ("[[devices]]\nkind = 'hr'\ncount = 2\nname = 'A'", "name: only allowed with count = 1"),
        ("[[devices]]\nkind = 'hr'\naddress = 'nope'", "address: expected XX:XX"),
        ("[[devices]]\nkind = 'hr'\n[devices.faults]\nboom = 1", "faults: unknown fault 'boom'"),
        (
            "[[devices]]\nkind = 'hr'\n[devices.faults]\nmalformed = 'x'",
            "devices[0].faults.malformed",
        ),
        ("devices = 3", "devices must be an array"),
        ("seed = ", "not valid TOML"),
    ],
)
def test_scenario_validation_errors(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="t.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("t.toml")


def test_scenario_missing_file_and_unknown_packaged_name(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "absent.toml")
    with pytest.raises(ScenarioError, match="no packaged scenario 'nope'"):
        load_scenario("nope")


async def test_a_failing_tick_does_not_stop_the_fleet() -> None:
    clock = ManualClock(START)
    fleet = build_fleet(devices="hr:1", clock=clock)
    d = fleet.devices[0]
    calls = 0
    original = d.tick

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        await original()

    d.tick = flaky  # type: ignore[method-assign]
    await fleet.start()
    await clock.advance(4)
    await fleet.stop()
    assert calls == 4
