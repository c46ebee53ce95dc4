"""`edge run` refusals, and `edge status` / `edge consent` when the daemon is not running
(straight from the real vault, saying so)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from edge.cli import main

PIN = "sha256/" + "A" * 43 + "="


def write_config(tmp_path: Path, vault_mode: int = 0o700) -> Path:
    vault_dir = tmp_path / "vault"
    vault_dir.mkdir(mode=vault_mode)
    vault_dir.chmod(vault_mode)
    for name in ("ca.pem", "hub.pem"):
        (tmp_path / name).write_text("not a certificate\n")
    key = tmp_path / "hub.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[hub]
id = "hub-cli"
[vault]
path = "{vault_dir / 'vault.db'}"
key_provider = "env"
allow_env_key = true
[uplink]
host = "127.0.0.1"
ca_file = "{tmp_path / 'ca.pem'}"
client_cert = "{tmp_path / 'hub.pem'}"
client_key = "{key}"
pins = ["{PIN}"]
[e2e]
mode = "off"
[daemon]
control_socket = "{tmp_path / 'run' / 'control.sock'}"
""")
    return cfg


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_VAULT_KEY", secrets.token_hex(32))


def test_run_refuses_a_vault_directory_others_can_read(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, vault_mode=0o755)
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "vault.path" in err and "chmod 700" in err
    assert not (tmp_path / "vault" / "vault.db").exists()


def test_status_and_consent_without_a_daemon(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(tmp_path))
    assert main(["consent", "grant", "pt-one", "--config", cfg]) == 0
    assert "in the vault (daemon not running)" in capsys.readouterr().out
    assert main(["consent", "list", "--json", "--config", cfg]) == 0
    consents = json.loads(capsys.readouterr().out)
    assert [(c["patient"], c["revoked_at"]) for c in consents] == [("pt-one", None)]
    assert main(["consent", "revoke", "pt-one", "--config", cfg]) == 0
    assert "0 pending readings purged" in capsys.readouterr().out

    assert main(["status", "--json", "--config", cfg]) == 0
    out = capsys.readouterr()
    status = json.loads(out.out)  # stdout is exactly one JSON document
    assert status["source"] == "vault"
    assert status["queue_depth"] == 0
    assert status["refusals"]["no_consent"] == 0
    assert status["uplink"] == {"state": "daemon not running"}
    assert status["cert_days_left"] is None  # the test certificate is not a certificate

    assert main(["status", "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "the daemon is not running; figures from the vault" in text


def test_consent_refuses_what_is_not_a_pseudonym(
    tmp_path: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(tmp_path))
    assert main(["consent", "grant", "Jane Doe", "--config", cfg]) != 0
    err = capsys.readouterr().err
    assert "pseudonym" in err and "Jane" not in err
    assert not (tmp_path / "vault" / "vault.db").exists()
