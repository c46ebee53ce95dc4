"""A vault that disappears is never silently replaced by an empty one (issue 14): once a key
has opened a vault, a missing vault file (renamed, deleted, its directory not mounted) is an
error with the way out; a new key (`edge keys init`) starts a new vault. Real SQLCipher files.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import VaultConfig
from edge.errors import VaultError
from edge.vault.files import opened_key_ids, vault_marker
from edge.vault.keys import key_id, key_provider
from edge.vault.rotation import open_vault, rotate_key
from tests.support.vault_support import hr, vault_config, write_gateway_config, write_key

pytestmark = pytest.mark.integration


def _vault_files(cfg: VaultConfig) -> list[str]:
    return sorted(p.name for p in cfg.path.parent.glob(cfg.path.name + "*"))


async def _create(cfg: VaultConfig) -> None:
    vault = await open_vault(cfg, actor="test")
    try:
        await vault.grant_consent("pt-alpha", scope="vitals", actor="test")
        await vault.append([hr(1)])
    finally:
        await vault.close()


def _steal(cfg: VaultConfig) -> None:
    """What the other user did: rename the vault (and its journal files) away."""
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(cfg.path) + suffix)
        if p.exists():
            p.rename(p.with_name(p.name + ".stolen"))


async def test_a_renamed_vault_is_an_error_not_a_new_empty_vault(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    await _create(cfg)
    marker = vault_marker(cfg)
    assert marker is not None and cfg.key_file is not None
    assert marker.parent == cfg.key_file.parent  # beside the key, apart from the data
    assert opened_key_ids(marker) == [key_id(key)]
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert key.hex() not in marker.read_text()

    _steal(cfg)
    # Before: the daemon quietly created a new, empty vault in its place.
    with pytest.raises(VaultError) as ei:
        await open_vault(cfg, actor="test")
    message = str(ei.value)
    assert "missing" in message and "will not put an empty vault" in message
    assert "edge keys init" in message
    assert not cfg.path.exists()

    # the vault comes back: it opens, with everything in it
    for p in cfg.path.parent.glob("*.stolen"):
        p.rename(p.with_name(p.name.removesuffix(".stolen")))
    vault = await open_vault(cfg, actor="test")
    try:
        assert (await vault.stats()).pending == 1
    finally:
        await vault.close()


async def test_a_vanished_vault_directory_is_not_recreated(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    await _create(cfg)
    shutil.rmtree(cfg.path.parent)  # e.g. the data partition did not mount
    with pytest.raises(VaultError):
        await open_vault(cfg, actor="test")
    assert not cfg.path.parent.exists()


async def test_a_new_key_starts_a_new_vault(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    await _create(cfg)
    _steal(cfg)
    assert cfg.key_file is not None
    cfg.key_file.rename(cfg.key_file.with_name("vault.key.retired"))
    key_provider(cfg).create()  # what `edge keys init` does
    vault = await open_vault(cfg, actor="test")
    try:
        assert (await vault.stats()).pending == 0
    finally:
        await vault.close()


async def test_a_rotated_key_is_known_too(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    await _create(cfg)
    await rotate_key(cfg, actor="test")
    marker = vault_marker(cfg)
    assert marker is not None
    assert cfg.key_file is not None
    new = key_provider(cfg).load()
    assert key_id(new) in opened_key_ids(marker)
    _steal(cfg)
    with pytest.raises(VaultError):
        await open_vault(cfg, actor="test")


async def test_the_systemd_credential_provider_keeps_its_marker_beside_the_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "vault-key").write_bytes(os.urandom(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = vault_config(tmp_path, key_provider="systemd-credential", key_file=None)
    await _create(cfg)
    assert vault_marker(cfg) == cfg.path.with_name("vault.db.opened")
    assert list(creds.iterdir()) == [creds / "vault-key"], "the credential store is untouched"
    _steal(cfg)
    with pytest.raises(VaultError):
        await open_vault(cfg, actor="test")


async def test_a_wrong_key_is_still_a_wrong_key(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    await _create(cfg)
    before = _vault_files(cfg)
    write_key(cfg)  # another key over the old one: not a vanished vault
    from edge.errors import KeyUnavailable

    with pytest.raises(KeyUnavailable):
        await open_vault(cfg, actor="test")
    assert _vault_files(cfg) == before


def test_the_cli_says_so_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    for name in ("ca.pem", "client.pem"):
        (tmp_path / name).write_text("not a certificate\n")
    (tmp_path / "client.key").write_text("not a key\n")
    (tmp_path / "client.key").chmod(0o600)
    config = write_gateway_config(tmp_path, cfg)
    config.write_text(config.read_text() + f'\n[daemon]\ncontrol_socket = "{tmp_path}/c.sock"\n')
    assert main(["consent", "grant", "pt-alpha", "--config", str(config)]) == 0
    capsys.readouterr()
    _steal(cfg)
    assert main(["status", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is missing" in err and "edge keys init" in err
    assert not cfg.path.exists()
