"""``edge pair / devices / unpair`` as subprocesses: bleak's real backend against the fake
BlueZ (``python -m firmware_sim serve``), a real SQCipher vault, the audit trail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.vault import Vault
from firmware_sim.fleet import build_fleet
from tests.support.bluez import REPO, bluetoothctl_shim, serve_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KEY = "ab" * 32
SPEC, SEED = "hr:1,glucose:1", 9


def _config(tmp: Path) -> Path:
    (tmp / "vault").mkdir(mode=0o700)
    (tmp / "run").mkdir(mode=0o700)
    for name in ("ca.pem", "client.pem"):
        (tmp / name).write_text("placeholder\n")
    key = tmp / "client.key"
    key.write_text("placeholder\n")
    key.chmod(0o600)
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f"""
[hub]
id = "hub-test"

[ble]
connect_timeout_s = 10.0

[vault]
path = "{tmp / 'vault' / 'vault.db'}"
key_provider = "env"
allow_env_key = true

[uplink]
host = "127.0.0.1"
ca_file = "{tmp / 'ca.pem'}"
client_cert = "{tmp / 'client.pem'}"
client_key = "{key}"
pins = ["sha256/{'A' * 43}="]

[e2e]
mode = "off"

[daemon]
control_socket = "{tmp / 'run' / 'control.sock'}"
"""
    )
    return cfg


def _edge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
        stdin=subprocess.DEVNULL,  # no terminal: `edge pair` never waits for a typed passkey
    )


async def test_pair_devices_unpair_commands(tmp_path: Path) -> None:
    fleet = build_fleet(devices=SPEC, seed=SEED)
    hr = next(d for d in fleet if d.kind == "heart_rate").address
    glu = next(d for d in fleet if d.kind == "glucose").address
    cfg = _config(tmp_path)
    with serve_process(["--devices", SPEC, "--seed", str(SEED)]) as sim:
        env = dict(os.environ)
        env.update(
            DBUS_SYSTEM_BUS_ADDRESS=sim.address,
            PATH=f"{bluetoothctl_shim(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}",
            EDGE_CONFIG=str(cfg),
            EDGE_VAULT_KEY=KEY,
            PYTHONPATH=str(REPO),
        )
        # pairing needs the patient's consent first: nothing is bonded or bound without it
        out = _edge(env, "pair", hr.lower(), "--patient", "p-one", "--json")
        assert out.returncode == 2 and "edge consent grant" in out.stderr
        assert json.loads(_edge(env, "devices", "--json").stdout) == []
        for patient in ("p-one", "p-two"):
            assert _edge(env, "consent", "grant", patient).returncode == 0

        out = _edge(env, "pair", hr.lower(), "--patient", "p-one", "--json")
        assert out.returncode == 0, out.stderr
        paired = json.loads(out.stdout)
        assert paired["address"] == hr and paired["kind"] == "heart_rate"
        assert paired["device_information"]["manufacturer"] == "Simulated Devices Ltd"
        assert paired["daemon_notified"] is False

        # a glucose meter is not a heart-rate strap: refused, clearly, without its address
        out = _edge(env, "pair", glu, "--patient", "p-two", "--kind", "heart_rate")
        assert out.returncode == 3
        assert "Heart Rate service" in out.stderr
        assert glu not in out.stderr and glu.replace(":", "_") not in out.stderr

        out = _edge(env, "devices", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert [(r["address"], r["kind"], r["patient"], r["bonded"]) for r in rows] == [
            (hr, "heart_rate", "p-one", True)
        ]
        assert rows[0]["state"] == "daemon_not_running"

        out = _edge(env, "unpair", hr)
        assert out.returncode == 0, out.stderr
        assert "unpaired" in out.stdout
        out = _edge(env, "devices", "--json")
        assert json.loads(out.stdout) == []

        out = _edge(env, "pair", "not-an-address", "--patient", "p")
        assert out.returncode == 2

    vault = await Vault.open(VaultConfig(path=tmp_path / "vault" / "vault.db", key_provider="env",
                                         allow_env_key=True), bytes.fromhex(KEY))
    try:
        actions = [e.action for e in await vault.audit_tail(20)]
        assert await vault.verify_audit() >= 3
    finally:
        await vault.close()
    assert actions[-3:] == ["device.bound", "device.pairing_refused", "device.unbound"]
