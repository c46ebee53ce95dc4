"""The gateway's own pairing agent against the fake BlueZ, under unchanged bleak: ``edge pair``
with a passkey, a numeric comparison, a prompt on a terminal, and each way a pairing fails; the
daemon's standing agent that rejects every unsolicited pairing request."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.ble.agent import AGENT_PATH, HubAgent, registered_agent
from edge.ble.agent_policy import Handled, Method, Outcome, PairingPolicy, Why
from edge.ble.pairing import PairedDevice, PairingFailed, answering, pair_device
from edge.ble.ports import bleak_client_factory, bleak_scanner_factory
from edge.clock import Clock, SystemClock
from edge.config import VaultConfig, parse_config
from edge.daemon import Daemon
from edge.daemon.control import ControlClient
from edge.errors import BleError
from edge.testing import eventually
from edge.testing.vault import MemoryVault
from edge.vault import Vault
from firmware_sim.bluez import BlueZOptions, FakeBlueZ
from firmware_sim.fleet import Fleet, build_fleet
from tests.integration.daemon_fakes import FakeBle, FakeBroker
from tests.integration.test_ble_cli import KEY, _config
from tests.support.bluez import (
    REPO,
    BlueZClient,
    SimBus,
    bluetoothctl_shim,
    error_of,
    fake_bluez,
    use_fake_bluez,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPEC = (
    "glucose:1:pairing=passkey:passkey=123456,"
    "hr:1:pairing=numeric_comparison,"
    "glucose:1:pairing=passkey:passkey=222222"
)
PASSKEY = 123456
DEVICE = "org.bluez.Device1"


@asynccontextmanager
async def bluez(options: BlueZOptions | None = None) -> AsyncIterator[tuple[Fleet, SimBus]]:
    fleet = build_fleet(devices=SPEC, seed=5)
    async with fake_bluez(fleet, options=options) as sim:
        yield fleet, sim


async def bonded_in_bluez(sim: SimBus, address: str) -> bool | None:
    """BlueZ's ``Paired`` for ``address``; None when BlueZ keeps no such device."""
    client = await BlueZClient.connect(sim.address)
    try:
        for ifaces in (await client.managed_objects()).values():
            dev = ifaces.get(DEVICE)
            if dev is not None and dev["Address"] == address:
                return bool(dev["Paired"])
        return None
    finally:
        client.close()


@dataclass
class ScriptedPrompter:
    """The person at the terminal, scripted: answers in order; ``hang`` never answers."""

    passkeys: list[int | None] = field(default_factory=list)
    answers: list[bool | None] = field(default_factory=list)
    hang: bool = False
    asked: list[str] = field(default_factory=list)
    withdrawn: asyncio.Event = field(default_factory=asyncio.Event)

    async def _wait(self) -> None:
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.withdrawn.set()
                raise

    async def passkey(self) -> int | None:
        self.asked.append("passkey")
        await self._wait()
        return self.passkeys.pop(0)

    async def confirm(self, code: str) -> bool | None:
        self.asked.append(code)
        await self._wait()
        return self.answers.pop(0)

    def show(self, code: str) -> None:
        self.asked.append(f"show {code}")


async def pair(address: str, **answers: Any) -> PairedDevice:
    return await pair_device(bleak_client_factory(), address, clock=SystemClock(),
                             scanner_factory=bleak_scanner_factory(), connect_timeout_s=10,
                             agent=answering(**answers))


# --- pair_device with the agent ----------------------------------------------------------


async def test_a_passkey_meter_bonds_with_the_right_passkey_and_the_agent_goes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with bluez() as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        paired = await pair(meter.address, passkey=PASSKEY)
        assert (paired.address, paired.kind) == (meter.address, "glucose")
        assert meter.paired
        assert await bonded_in_bluez(sim, meter.address) is True
        assert sim.bluez.agents.default is None  # unregistered afterwards


@pytest.mark.parametrize(
    ("answers", "reason", "words"),
    [
        ({"passkey": 654321}, "wrong_passkey", "wrong passkey"),
        ({}, "passkey_needed", "--passkey"),
        ({"prompter": ScriptedPrompter(passkeys=[None])}, "aborted", "cancelled at the prompt"),
    ],
    ids=["wrong-passkey", "no-terminal", "no-answer-at-the-prompt"],
)
async def test_a_failed_passkey_pairing_leaves_nothing_in_bluez(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answers: dict[str, Any], reason: str,
    words: str,
) -> None:
    async with bluez() as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        with pytest.raises(PairingFailed) as info:
            await pair(meter.address, **answers)
        assert info.value.reason == reason and info.value.exit_code == 2
        assert words in str(info.value)
        assert meter.address not in str(info.value) and "654321" not in str(info.value)
        assert not meter.paired
        # RemoveDevice: no trusted, half-made device left behind
        assert await bonded_in_bluez(sim, meter.address) is None
        assert sim.bluez.agents.default is None


async def test_the_person_at_the_terminal_types_the_passkey(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with bluez() as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        prompter = ScriptedPrompter(passkeys=[PASSKEY])
        await pair(meter.address, prompter=prompter)
        assert prompter.asked == ["passkey"]
        assert meter.paired


async def test_a_device_cancelling_is_cancelled_by_the_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with bluez() as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        meter.inject_fault({"pairing_refused": "canceled"})
        with pytest.raises(PairingFailed, match="cancelled by the device") as info:
            await pair(meter.address, passkey=PASSKEY)
        assert info.value.reason == "cancelled"
        assert not meter.paired
        assert await bonded_in_bluez(sim, meter.address) is None


async def test_nobody_answering_times_out_and_withdraws_the_question(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with bluez(BlueZOptions(agent_timeout=0.3)) as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        prompter = ScriptedPrompter(hang=True)
        with pytest.raises(PairingFailed, match="timed out") as info:
            await pair(meter.address, prompter=prompter)
        assert info.value.reason == "timeout"
        assert prompter.withdrawn.is_set()  # BlueZ's Cancel reached the prompt
        assert not meter.paired
        assert await bonded_in_bluez(sim, meter.address) is None


async def test_numeric_comparison_is_confirmed_with_confirm_or_at_the_prompt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with bluez() as (fleet, sim):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        strap = fleet.get("SIM-HR-1")
        paired = await pair(strap.address, confirm=True)
        assert paired.kind == "heart_rate" and strap.paired

        # again, asking the person: they see the code the strap shows
        shown: list[int | None] = []

        class LooksAtTheStrap(ScriptedPrompter):
            async def confirm(self, code: str) -> bool | None:
                shown.append(strap.displayed_code)
                return await super().confirm(code)

        client = await BlueZClient.connect(sim.address)
        try:
            reply = await client.bluez(sim.bluez.adapter.path, "org.bluez.Adapter1",
                                       "RemoveDevice", "o", sim.bluez.device_path(strap.address))
            assert error_of(reply) == (None, "")
        finally:
            client.close()
        prompter = LooksAtTheStrap(answers=[False])
        with pytest.raises(PairingFailed, match="not confirmed"):
            await pair(strap.address, prompter=prompter)
        assert not strap.paired
        prompter = LooksAtTheStrap(answers=[True])
        await pair(strap.address, prompter=prompter)
        assert strap.paired
        assert [int(c) for c in prompter.asked] == [shown[-1]]


async def test_the_pairing_agent_answers_only_for_its_device(tmp_path: Path) -> None:
    async with bluez() as (fleet, sim):
        meter, other_meter = fleet.get("SIM-GLU-1"), fleet.get("SIM-GLU-2")
        seen: list[Handled] = []
        policy = PairingPolicy(meter.address, passkey=222222)  # the other meter's passkey
        async with registered_agent(policy, on_handled=seen.append,
                                    bus_address=sim.address) as shell:
            other = await BlueZClient.connect(sim.address)
            try:
                path = await other.discover(sim, other_meter.address)
                reply = await other.bluez(path, DEVICE, "Pair")
                assert error_of(reply)[0] == "org.bluez.Error.AuthenticationFailed"

                # nobody but BlueZ gets an answer from the agent (and so no passkey)
                unique = shell.bus.unique_name
                assert unique is not None
                asked = await other.call(unique, AGENT_PATH, "org.bluez.Agent1",
                                         "RequestPasskey", "o",
                                         [sim.bluez.device_path(meter.address)])
                assert error_of(asked)[0] == "org.bluez.Error.Rejected"
                assert "222222" not in str(asked.body)
            finally:
                other.close()
        assert [(h.request.method, h.outcome, h.why) for h in seen] == [
            (Method.REQUEST_PASSKEY, Outcome.REJECTED, Why.OTHER_DEVICE)
        ]
        assert not other_meter.paired
        assert sim.bluez.agents.default is None


# --- edge pair, the command --------------------------------------------------------------


def edge_env(sim: SimBus, cfg: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DBUS_SYSTEM_BUS_ADDRESS=sim.address,
        PATH=f"{bluetoothctl_shim(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}",
        EDGE_CONFIG=str(cfg),
        EDGE_VAULT_KEY=KEY,
        PYTHONPATH=str(REPO),
    )
    return env


def vault_cfg(tmp_path: Path) -> VaultConfig:
    return VaultConfig(path=tmp_path / "vault" / "vault.db", key_provider="env",
                       allow_env_key=True)


async def consent(tmp_path: Path, patient: str) -> None:
    vault = await Vault.open(vault_cfg(tmp_path), bytes.fromhex(KEY))
    try:
        await vault.grant_consent(patient, scope="vitals", actor="test")
    finally:
        await vault.close()


async def bindings_and_audit(tmp_path: Path) -> tuple[list[str], list[tuple[str, str]], Vault]:
    vault = await Vault.open(vault_cfg(tmp_path), bytes.fromhex(KEY))
    bound = [b.address for b in await vault.bindings()]
    audit = [(e.action, e.subject) for e in await vault.audit_tail(50)]
    return bound, audit, vault


@dataclass
class Run:
    rc: int
    out: str
    err: str


async def edge_pair(env: dict[str, str], *args: str, stdin: int = subprocess.DEVNULL,
                    answer: bytes | None = None, tty: int | None = None) -> Run:
    """``edge pair *args`` as a subprocess; with ``answer``, typed at ``tty`` once the prompt
    shows."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "pair", *args, stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stderr is not None
    prompt = b""
    if answer is not None:
        assert tty is not None
        prompt = await asyncio.wait_for(proc.stderr.readuntil(b"shows: "), 60)
        os.write(tty, answer)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), (prompt + err).decode())


def last_line(run: Run) -> str:
    return run.err.strip().splitlines()[-1]


def no_secrets(run: Run, address: str, *secrets: str) -> None:
    for text in (address, address.replace(":", "_"), *secrets):
        assert text not in run.err


async def test_edge_pair_with_the_right_passkey_binds_the_meter(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey", "123456")
        assert run.rc == 0, run.err
        assert "paired glucose" in run.out
        assert meter.paired and await bonded_in_bluez(sim, meter.address) is True
        assert sim.bluez.agents.default is None
    bound, audit, vault = await bindings_and_audit(tmp_path)
    await vault.close()
    assert bound == [meter.address]
    assert audit[-1][0] == "device.bound"


async def test_edge_pair_with_a_wrong_passkey_binds_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey", "654321")
        assert run.rc == 2
        assert run.err.strip().count("\n") == 0, run.err  # one line
        assert "wrong passkey" in last_line(run)
        no_secrets(run, meter.address, "654321", "123456", "p-one")
        assert not meter.paired
        assert await bonded_in_bluez(sim, meter.address) is None  # nothing half-made kept
    bound, audit, vault = await bindings_and_audit(tmp_path)
    try:
        assert bound == []
        assert audit[-1] == ("device.pairing_failed",
                             f"{vault.device_hash(meter.address)} wrong_passkey")
        assert await vault.verify_audit() >= 1
    finally:
        await vault.close()


async def test_edge_pair_says_when_the_device_cancelled(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        meter.inject_fault({"pairing_refused": "canceled"})
        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey", "123456")
        assert run.rc == 2
        assert "cancelled by the device" in last_line(run)
        no_secrets(run, meter.address, "123456")
        assert not meter.paired
    bound, audit, vault = await bindings_and_audit(tmp_path)
    await vault.close()
    assert bound == [] and audit[-1][1].endswith(" cancelled")


async def test_edge_pair_without_a_terminal_names_the_passkey_option(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        run = await edge_pair(env, meter.address, "--patient", "p-one")
        assert run.rc == 2
        assert "--passkey" in last_line(run) and "no terminal" in last_line(run)
        assert not meter.paired

        bad = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey", "12ab56")
        assert bad.rc == 2 and "--passkey" in bad.err and "12ab56" not in bad.err


async def test_edge_pair_asks_on_the_terminal(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        master, slave = pty.openpty()
        try:
            run = await edge_pair(env, meter.address, "--patient", "p-one", stdin=slave,
                                  answer=b"123456\n", tty=master)
        finally:
            os.close(slave)
            os.close(master)
        assert run.rc == 0, run.err
        assert "Enter the 6-digit passkey" in run.err
        assert meter.paired


async def test_edge_pair_times_out_when_nobody_answers(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez(BlueZOptions(agent_timeout=0.5)) as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        meter = fleet.get("SIM-GLU-1")
        master, slave = pty.openpty()
        try:
            run = await edge_pair(env, meter.address, "--patient", "p-one", stdin=slave)
        finally:
            os.close(slave)
            os.close(master)
        assert run.rc == 2
        assert "timed out" in last_line(run)
        assert "withdrawn" in run.err  # the prompt did not stay up
        assert not meter.paired


async def test_edge_pair_confirms_a_numeric_comparison_with_confirm(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-two")
    async with bluez() as (fleet, sim):
        env = edge_env(sim, cfg, tmp_path)
        strap = fleet.get("SIM-HR-1")
        run = await edge_pair(env, strap.address, "--patient", "p-two")
        assert run.rc == 2 and "--confirm" in last_line(run)
        assert not strap.paired
        run = await edge_pair(env, strap.address, "--patient", "p-two", "--confirm", "--json")
        assert run.rc == 0, run.err
        assert strap.paired


# --- the daemon's standing agent ---------------------------------------------------------


def daemon_config(tmp_path: Path) -> Any:
    pin = "sha256/" + "A" * 43 + "="
    return parse_config({
        "hub": {"id": "hub-test"},
        "vault": {"path": str(tmp_path / "state" / "vault.db"), "key_provider": "env",
                  "allow_env_key": True},
        "uplink": {"host": "localhost", "ca_file": str(tmp_path / "ca.pem"),
                   "client_cert": str(tmp_path / "hub.pem"),
                   "client_key": str(tmp_path / "hub.key"), "pins": [pin]},
        "e2e": {"mode": "off"},
        "daemon": {"control_socket": str(tmp_path / "run" / "control.sock"),
                   "health_interval_s": 1.0, "shutdown_timeout_s": 4.0},
    })


async def stranger_pairs(sim: SimBus, address: str) -> tuple[str | None, str]:
    """Another client (with no agent of its own) asks BlueZ to pair ``address``."""
    client = await BlueZClient.connect(sim.address)
    try:
        path = await client.discover(sim, address)
        return error_of(await client.bluez(path, DEVICE, "Pair"))
    finally:
        client.close()


async def status_of(socket: Path) -> dict[str, Any]:
    status = await asyncio.to_thread(ControlClient(socket).request, "status")
    assert isinstance(status, dict)
    return status


async def test_the_daemon_rejects_unsolicited_pairing_counts_and_audits_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    vault = MemoryVault()
    async with bluez() as (fleet, sim):

        def agent(audit: Any, clock: Clock) -> HubAgent:
            return HubAgent(audit, clock, bus_address=sim.address)

        async def open_vault() -> MemoryVault:
            return vault

        daemon = Daemon(daemon_config(tmp_path), vault_factory=open_vault,
                        ble_factory=FakeBle, connector=FakeBroker().connect,
                        agent_factory=agent, install_signal_handlers=False, env={})
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            await eventually(lambda: sim.bluez.agents.default is not None, within_s=10,
                             what="the daemon's default agent")
            meter, strap = fleet.get("SIM-GLU-1"), fleet.get("SIM-HR-1")
            sock = daemon.config.daemon.control_socket
            assert (await status_of(sock))["pairing"] == {
                "agent": "holding", "unsolicited_pairing_rejected": 0}

            failed = "org.bluez.Error.AuthenticationFailed"
            assert (await stranger_pairs(sim, meter.address))[0] == failed
            assert (await stranger_pairs(sim, meter.address))[0] == failed
            assert (await stranger_pairs(sim, strap.address))[0] == failed
            assert not meter.paired and not strap.paired
            status = await status_of(sock)
            assert status["pairing"]["unsolicited_pairing_rejected"] == 3
            assert status["parts"]["agent"]["state"] == "running"

            def rejections() -> list[str]:
                return [e.subject for e in vault_audit
                        if e.action == "device.unsolicited_pairing_rejected"]

            vault_audit: Sequence[Any] = []

            async def audited() -> bool:
                nonlocal vault_audit
                vault_audit = await vault.audit_tail(50)
                return len(rejections()) == 2

            await eventually(audited, within_s=10, what="two audit entries")
            # the meter's second attempt is counted, not audited again; no address in clear
            assert sorted(rejections()) == sorted([
                f"{vault.device_hash(meter.address)} RequestPasskey",
                f"{vault.device_hash(strap.address)} RequestConfirmation",
            ])
            assert not any(meter.address in s or strap.address in s for s in rejections())
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 15) == 0
        await eventually(lambda: sim.bluez.agents.default is None, within_s=10,
                         what="the daemon's agent unregistered")


async def test_edge_pair_works_while_the_daemons_agent_holds(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    await consent(tmp_path, "p-one")
    async with bluez() as (fleet, sim):
        hub = HubAgent(bus_address=sim.address)
        holding = asyncio.create_task(hub.run())
        try:
            await eventually(lambda: hub.stats()["agent"] == "holding", within_s=10,
                             what="the daemon's agent holding")
            env = edge_env(sim, cfg, tmp_path)
            meter = fleet.get("SIM-GLU-1")
            run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey",
                                  "123456")
            assert run.rc == 0, run.err
            assert meter.paired and hub.rejected == 0
            # edge pair's agent went with it: the hub's is the default again
            other = fleet.get("SIM-GLU-2")
            assert (await stranger_pairs(sim, other.address))[0] == (
                "org.bluez.Error.AuthenticationFailed")
            assert hub.rejected == 1 and not other.paired
        finally:
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
        assert hub.stats()["agent"] == "stopped"


async def test_the_daemons_agent_fails_when_bluez_goes_and_holds_again_after(
    tmp_path: Path,
) -> None:
    async with bluez() as (_fleet, sim):
        hub = HubAgent(bus_address=sim.address)
        holding = asyncio.create_task(hub.run())
        await eventually(lambda: hub.stats()["agent"] == "holding", within_s=10,
                         what="the agent holding")
        await sim.bluez.stop()  # bluetoothd restarts: its agents are gone
        with pytest.raises(BleError, match="registering it again"):
            await asyncio.wait_for(holding, 10)
        assert hub.stats()["agent"] == "stopped"

        # what the daemon's supervisor does next: register again with the new bluetoothd
        fleet = build_fleet(devices="glucose:1:pairing=passkey:passkey=123456", seed=6)
        restarted = FakeBlueZ(sim.address)
        restarted.follow(fleet)
        await restarted.start()
        try:
            holding = asyncio.create_task(hub.run())
            await eventually(lambda: restarted.agents.default is not None, within_s=10,
                             what="the agent registered again")
            meter = fleet.devices[0]
            sim.bluez = restarted
            assert (await stranger_pairs(sim, meter.address))[0] == (
                "org.bluez.Error.AuthenticationFailed")
            assert hub.rejected == 1
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
            await eventually(lambda: restarted.agents.default is None, within_s=10,
                             what="the agent unregistered")
        finally:
            await restarted.stop()
