"""`edge check-config` on the machine itself (issue 14's hostile configs, issue 10's installer
traps): owners, symbolic links, the control socket's directory, the broker's host name, what is
not installed, the client key given twice, hub.id against the certificate's CN. Each problem is
one line ``key.path: what — fix: how`` and never echoes a value."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.cli import main
from edge.config import load_config
from edge.config_checks import valid_host
from edge.config_env import check_environment
from tests.support.privileges import require_root

PIN = "sha256/" + "A" * 43 + "="
OTHER_UID = 54321  # no such user on a test machine

def _cert(path: Path, cn: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Hub:
    """A valid configuration with real files: private directories, 0600 keys, a client
    certificate whose CN is the hub id."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tls, self.keys, self.data, self.run = (base / n for n in ("tls", "keys", "data",
                                                                        "run"))
        for d in (self.tls, self.keys, self.data, self.run):
            d.mkdir()
            d.chmod(0o700)
        self.ca = self.tls / "ca.pem"
        self.ca.write_text("-----BEGIN CERTIFICATE-----\n")
        self.cert = self.tls / "hub.pem"
        _cert(self.cert, "hub-0001")
        self.client_key = self.tls / "hub.key"
        self.vault_key = self.keys / "vault.key"
        for f in (self.client_key, self.vault_key):
            f.write_text("secret\n")
            f.chmod(0o600)
        self.vault = self.data / "vault.db"

    def write(self, *, hub_id: str = "hub-0001", host: str = "127.0.0.1",
              uplink_extra: str = "", vault_key: Path | None = None,
              vault: Path | None = None, socket_dir: Path | None = None) -> Path:
        path = self.base / "gateway.toml"
        path.write_text(
            f'[hub]\nid = "{hub_id}"\n\n'
            f'[vault]\npath = "{vault or self.vault}"\nkey_provider = "file"\n'
            f'key_file = "{vault_key or self.vault_key}"\n\n'
            f'[uplink]\nhost = "{host}"\nca_file = "{self.ca}"\n'
            f'client_cert = "{self.cert}"\nclient_key = "{self.client_key}"\n'
            f'pins = ["{PIN}"]\n{uplink_extra}\n'
            '[e2e]\nmode = "off"\n\n'
            f'[daemon]\ncontrol_socket = "{(socket_dir or self.run) / "control.sock"}"\n'
        )
        return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hub:
    monkeypatch.delenv("EDGE_CONFIG", raising=False)
    return Hub(tmp_path)


Check = Callable[[Path], tuple[int, list[str]]]


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str]) -> Check:
    def _check(config: Path) -> tuple[int, list[str]]:
        rc = main(["check-config", "--config", str(config)])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        lines = err.splitlines()
        for line in lines:  # one line each: key.path: what — fix: how
            assert ": " in line and " — fix: " in line, line
        return rc, lines

    return _check


def _keys(lines: list[str]) -> list[str]:
    return sorted(line.split(":", 1)[0] for line in lines)


def test_the_baseline_is_valid(hub: Hub, check: Check) -> None:
    assert check(hub.write()) == (0, [])


def test_a_key_file_or_vault_directory_of_another_user_is_refused(
    hub: Hub, check: Check
) -> None:
    require_root("it chowns files to another user")
    # Before: a 0600 key owned by another user passed; that user read the key and renamed
    # the vault.
    os.chown(hub.vault_key, OTHER_UID, OTHER_UID)
    os.chown(hub.data, OTHER_UID, OTHER_UID)
    rc, lines = check(hub.write())
    assert rc == 2
    assert _keys(lines) == ["vault.key_file", "vault.path"]
    assert all("belongs to another user" in line for line in lines)
    # root's own files are fine
    os.chown(hub.vault_key, 0, 0)
    os.chown(hub.data, 0, 0)
    assert check(hub.write())[0] == 0


def test_key_files_that_are_symbolic_links_are_refused(hub: Hub, check: Check) -> None:
    # Before: accepted, and the daemon then failed with "Too many levels of symbolic links".
    link = hub.keys / "current.key"
    link.symlink_to(hub.vault_key)
    client_link = hub.tls / "client-link.key"
    client_link.symlink_to(hub.client_key)
    config = hub.write(vault_key=link)
    config.write_text(config.read_text().replace(str(hub.client_key), str(client_link)))
    rc, lines = check(config)
    assert rc == 2
    assert _keys(lines) == ["uplink.client_key", "vault.key_file"]
    assert all("is a symbolic link" in line for line in lines)
    # a dangling link is a link too, not a missing file
    link.unlink()
    link.symlink_to(hub.keys / "nowhere")
    assert "is a symbolic link" in "\n".join(check(hub.write(vault_key=link))[1])


def test_a_world_writable_socket_directory_is_refused_and_left_as_it_is(
    hub: Hub, check: Check
) -> None:
    shared = hub.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    rc, lines = check(hub.write(socket_dir=shared))
    assert (rc, _keys(lines)) == (2, ["daemon.control_socket"])
    assert "writable by others" in lines[0]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


@pytest.mark.parametrize("host", ["", "mqtts://broker.example.org", "broker.example.org:8883",
                                  "broker example.org", "10.0.0.256", "10.1", "[::1]",
                                  "-broker.example.org", "broker_1.example.org",
                                  "a" * 64 + ".example.org", "broker/obs"])
def test_an_empty_or_malformed_host_is_an_error(hub: Hub, check: Check, host: str) -> None:
    rc, lines = check(hub.write(host=host))
    assert (rc, _keys(lines)) == (2, ["uplink.host"])
    assert "DNS name or IP address" in lines[0] and "fix: set the name" in lines[0]
    if host:
        assert host not in lines[0]


@pytest.mark.parametrize("host", ["broker.example.org", "broker.example.org.", "localhost",
                                  "127.0.0.1", "::1", "fd00::1", "mqtt-1.hub.internal"])
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert valid_host(host)


def test_what_is_not_installed_is_an_error(hub: Hub, check: Check) -> None:
    # Before: a key file that does not exist and a vault directory that does not exist passed.
    rc, lines = check(hub.write(vault_key=hub.keys / "missing.key",
                                vault=hub.base / "nowhere" / "vault.db"))
    assert (rc, _keys(lines)) == (2, ["vault.key_file", "vault.path"])
    key, directory = sorted(lines)
    assert "`edge keys init`" in key and "does not exist" in key
    assert "does not exist" in directory and "install -d -m 700" in directory


def test_the_client_key_given_twice_is_an_error(hub: Hub, check: Check) -> None:
    rc, lines = check(hub.write(uplink_extra='client_key_credential = "client-key"\n'))
    assert (rc, _keys(lines)) == (2, ["uplink.client_key_credential"])
    assert "together with uplink.client_key" in lines[0]


def test_a_hub_id_that_is_not_the_certificate_cn_is_an_error(hub: Hub, check: Check) -> None:
    # Before: accepted; the probe then blamed the broker's ACL.
    rc, lines = check(hub.write(hub_id="hub-0002"))
    assert (rc, _keys(lines)) == (2, ["hub.id"])
    assert "CN" in lines[0] and "hub-0002" not in lines[0] and "hub-0001" not in lines[0]


def test_problems_are_reported_together_in_one_run(hub: Hub, check: Check) -> None:
    shared = hub.base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = hub.write(hub_id="hub-0002", socket_dir=shared,
                       vault=hub.base / "nowhere" / "vault.db",
                       uplink_extra='client_key_credential = "client-key"\n')
    rc, lines = check(config)
    assert rc == 2
    assert _keys(lines) == ["daemon.control_socket", "hub.id", "uplink.client_key_credential",
                            "vault.path"]


def test_the_vault_commands_still_work_before_the_key_exists(hub: Hub) -> None:
    # `edge keys init` runs before the key file exists: the missing key is check-config's
    # concern, not a schema or environment problem.
    cfg = load_config(hub.write(vault_key=hub.keys / "missing.key"))
    assert [p for p in check_environment(cfg) if p.startswith("vault.")] == []
