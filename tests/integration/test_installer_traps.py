"""The installer's traps (issue 10), through the real `edge` command and a real vault:
pairing without consent, `edge status` with a bound device whose patient has no consent,
consent scopes, revoking what was never granted, empty listings."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import load_config
from edge.daemon.control import ControlServer
from edge.daemon.control_handlers import NEVER_GRANTED
from edge.errors import ControlError
from edge.vault.rotation import open_vault
from tests.integration.test_daemon_cli import key_env, write_config

pytestmark = pytest.mark.integration

__all__ = ["key_env"]  # the fixture, used by name

ADDRESS = "AA:BB:CC:DD:EE:01"


def _bind(config: Path, patient: str) -> None:
    """What `edge pair` stores, straight into the vault (no Bluetooth needed)."""
    cfg = load_config(config)

    async def go() -> None:
        vault = await open_vault(cfg.vault, actor="test")
        try:
            await vault.bind_device(ADDRESS, "heart_rate", patient, bonded=True, actor="test")
        finally:
            await vault.close()

    asyncio.run(go())


def test_pairing_a_patient_without_consent_is_refused_before_anything_is_bonded(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edge.cli.ble_cmd as ble_cmd

    async def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("nothing may be bonded without consent")

    monkeypatch.setattr(ble_cmd, "pair_device", never)
    cfg = str(write_config(tmp_path))
    # Before: "paired", and then every reading was refused as no_consent.
    assert main(["pair", ADDRESS, "--patient", "pt-one", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "no consent" in err and "edge consent grant" in err and "pt-one" not in err
    assert main(["devices", "--json", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # a revoked consent is no consent either
    assert main(["consent", "grant", "pt-one", "--config", cfg]) == 0
    assert main(["consent", "revoke", "pt-one", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["pair", ADDRESS, "--patient", "pt-one", "--config", cfg]) == 2


def test_status_names_bound_devices_whose_patient_has_no_consent(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    _bind(config, "pt-one")
    assert main(["status", "--json", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["devices_without_consent"] == [ADDRESS]
    assert any("edge consent grant" in p for p in status["problems"])
    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "problem:" in text and "without consent" in text
    assert main(["consent", "grant", "pt-one", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["devices_without_consent"] == [] and "problems" not in status


@pytest.mark.parametrize("scope", ["", "❤️", "x" * 65, "a\tb"])
def test_consent_scope_must_be_printable_and_short(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str], scope: str
) -> None:
    cfg = str(write_config(tmp_path))
    # Before: an empty scope and an emoji were stored as given.
    assert main(["consent", "grant", "pt-one", "--scope", scope, "--config", cfg]) == 2
    assert "scope" in capsys.readouterr().err
    assert not (tmp_path / "vault" / "vault.db").exists(), "refused before the vault is opened"


def test_revoking_consent_never_granted_is_an_error(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(tmp_path))
    # Before: it succeeded silently (and stored a revoked record).
    assert main(["consent", "revoke", "pt-never", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "never granted" in err and "pt-never" not in err
    assert main(["consent", "list", "--json", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_empty_consent_list_says_so(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(tmp_path))
    assert main(["consent", "list", "--config", cfg]) == 0
    assert "no consent records" in capsys.readouterr().out


@pytest.fixture
def refusing_daemon(tmp_path: Path) -> Iterator[Path]:
    """A control socket whose consent requests are refused as the daemon refuses them."""

    async def revoke(request: Mapping[str, object], actor: str) -> object:
        raise ControlError(NEVER_GRANTED, "not_granted")

    async def grant(request: Mapping[str, object], actor: str) -> object:
        raise ControlError("a consent scope is ...", "bad_request")

    path = tmp_path / "run" / "control.sock"
    loop = asyncio.new_event_loop()
    server = ControlServer(path, {"consent.revoke": revoke, "consent.grant": grant})
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.close())
        loop.close()


def test_refusals_from_the_running_daemon_exit_2(
    tmp_path: Path, key_env: None, refusing_daemon: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(tmp_path))
    assert main(["consent", "revoke", "pt-never", "--config", cfg]) == 2
    assert "never granted" in capsys.readouterr().err
    assert main(["consent", "grant", "pt-one", "--config", cfg]) == 2
