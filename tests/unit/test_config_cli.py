"""`edge check-config`: each problem on its own line with its key path, exit 2, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.cli import main
from edge.config import DEFAULT_CONFIG_PATH, resolve_config_path
from edge.config_env import load_checked
from edge.errors import ConfigError

PIN = "sha256/" + "A" * 43 + "="


def _public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
ROOT = Path(__file__).resolve().parents[2]


class Setup:
    """A valid configuration with real files in a temporary directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        tls = base / "tls"
        keys = base / "keys"
        data = base / "data"
        for d in (tls, keys, data):
            d.mkdir(mode=0o700)
            d.chmod(0o700)
        self.ca = tls / "ca.pem"
        self.cert = tls / "hub.pem"
        self.client_key = tls / "hub.key"
        self.vault_key = keys / "vault.key"
        for f in (self.ca, self.cert):
            f.write_text("-----BEGIN CERTIFICATE-----\n")
            f.chmod(0o644)
        for f in (self.client_key, self.vault_key):
            f.write_text("secret\n")
            f.chmod(0o600)
        self.vault = data / "vault.db"
        self.recipient = tls / "clinic-e2e.pem"
        self.recipient.write_bytes(_public_pem(ec.generate_private_key(ec.SECP256R1())))
        self.e2e = f'[e2e]\nmode = "sign+encrypt"\nrecipient_key = "{self.recipient}"\n\n'

    def text(self, *, uplink_extra: str = "", pins: str | None = None,
             tls: str = '"1.3"', top_extra: str = "", e2e: str | None = None) -> str:
        pins = pins if pins is not None else f'["{PIN}"]'
        e2e = self.e2e if e2e is None else e2e
        return (
            f'{top_extra}[hub]\nid = "hub-0001"\n\n'
            f'[vault]\npath = "{self.vault}"\nkey_provider = "file"\n'
            f'key_file = "{self.vault_key}"\n\n'
            f'[uplink]\nhost = "127.0.0.1"\nca_file = "{self.ca}"\n'
            f'client_cert = "{self.cert}"\nclient_key = "{self.client_key}"\n'
            f"pins = {pins}\ntls_min_version = {tls}\n{uplink_extra}\n"
            f"{e2e}"
            '[log]\nlevel = "info"\n'
        )

    def write(self, text: str, name: str = "gateway.toml") -> Path:
        path = self.base / name
        path.write_text(text)
        return path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.delenv("EDGE_CONFIG", raising=False)
    monkeypatch.delenv("EDGE_DEBUG", raising=False)
    return Setup(tmp_path)


Run = Callable[..., tuple[int, str, list[str]]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def _run(*argv: str) -> tuple[int, str, list[str]]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert "Traceback" not in out
        return rc, out, err.splitlines()

    return _run


def test_valid_config_exits_zero(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text())
    rc, out, err = run("check-config", "--config", str(path))
    assert (rc, err) == (0, [])
    assert "ok" in out
    # --config before the subcommand works as well
    assert run("--config", str(path), "check-config")[0] == 0


def test_tls_12_is_accepted_even_as_a_toml_float(setup: Setup, run: Run) -> None:
    for tls in ('"1.2"', "1.2"):
        path = setup.write(setup.text(tls=tls))
        assert run("check-config", "--config", str(path))[0] == 0
        assert load_checked(path).uplink.tls_min_version == "1.2"


def test_unknown_keys_are_errors_with_their_path(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(uplink_extra="keepalive = 30\n", top_extra="colour = 1\n"))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 2
    assert any(line.startswith("uplink.keepalive: unknown key") for line in err)
    assert any(line.startswith("colour: unknown key") for line in err)
    assert all(" — fix: " in line for line in err)


@pytest.mark.parametrize("tls", ['"1.1"', '"1.0"', "1.1"])
def test_tls_below_12_is_an_error(setup: Setup, run: Run, tls: str) -> None:
    path = setup.write(setup.text(tls=tls))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1
    assert err[0].startswith("uplink.tls_min_version: ")
    assert "1.2" in err[0]


def test_empty_pin_list_is_an_error(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(pins="[]"))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1
    assert err[0].startswith("uplink.pins: ")
    assert "pin" in err[0].split(":", 1)[1]


def test_malformed_pin_is_an_error(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(pins='["sha1/abc"]'))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert err[0].startswith("uplink.pins")


@pytest.mark.parametrize("which", ["client_key", "vault_key"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_an_error(
    setup: Setup, run: Run, which: str, mode: int
) -> None:
    key: Path = getattr(setup, which)
    key.chmod(mode)
    path = setup.write(setup.text())
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1
    key_path = "uplink.client_key" if which == "client_key" else "vault.key_file"
    assert err[0].startswith(key_path + ": ")
    assert str(key) in err[0]
    assert f"chmod 600 {key}" in err[0]


def test_several_problems_are_all_printed_one_per_line(setup: Setup, run: Run) -> None:
    text = setup.text(pins="[]", tls='"1.1"', uplink_extra="port = 0\nbogus = true\n")
    text = text.replace('id = "hub-0001"', 'id = "hub/0001"')
    path = setup.write(text)
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    keys = sorted(line.split(":", 1)[0] for line in err)
    assert keys == sorted(
        ["hub.id", "uplink.port", "uplink.pins", "uplink.tls_min_version", "uplink.bogus"]
    )


def test_several_environment_problems_are_all_printed(setup: Setup, run: Run) -> None:
    setup.client_key.chmod(0o644)
    setup.vault_key.chmod(0o644)
    setup.ca.unlink()
    path = setup.write(setup.text())
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert sorted(line.split(":", 1)[0] for line in err) == [
        "uplink.ca_file", "uplink.client_key", "vault.key_file",
    ]


def test_loose_key_files_are_reported_with_schema_problems(setup: Setup, run: Run) -> None:
    setup.client_key.chmod(0o644)
    path = setup.write(setup.text(pins="[]"))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert sorted(line.split(":", 1)[0] for line in err) == ["uplink.client_key", "uplink.pins"]
    assert any(f"chmod 600 {setup.client_key}" in line for line in err)


def test_values_are_not_echoed(setup: Setup, run: Run) -> None:
    text = setup.text(uplink_extra='port = "s3cr3t-value"\n')
    rc, _, err = run("check-config", "--config", str(setup.write(text)))
    assert rc == 2
    assert err[0].startswith("uplink.port: ")
    assert "s3cr3t-value" not in "\n".join(err)


def test_invalid_toml_is_one_clean_line(setup: Setup, run: Run) -> None:
    path = setup.write('[hub\nid = "x"\n')
    rc, out, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert out == ""
    assert len(err) == 1
    assert "not valid TOML" in err[0]
    assert str(path) in err[0]


def test_missing_file_is_one_clean_line(setup: Setup, run: Run) -> None:
    rc, _, err = run("check-config", "--config", str(setup.base / "nope.toml"))
    assert rc == 2
    assert len(err) == 1
    assert "not found" in err[0]


def test_resolution_order(setup: Setup, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    good = setup.write(setup.text(), "good.toml")
    bad = setup.write(setup.text(pins="[]"), "bad.toml")
    # $EDGE_CONFIG is used without --config
    monkeypatch.setenv("EDGE_CONFIG", str(good))
    assert resolve_config_path(None) == good
    assert run("check-config")[0] == 0
    # --config wins over $EDGE_CONFIG
    assert resolve_config_path(str(bad)) == bad
    rc, _, err = run("check-config", "--config", str(bad))
    assert rc == 2
    assert err[0].startswith("uplink.pins")
    monkeypatch.setenv("EDGE_CONFIG", str(bad))
    assert run("check-config", "--config", str(good))[0] == 0
    # neither: the system path
    monkeypatch.delenv("EDGE_CONFIG")
    assert resolve_config_path(None) == DEFAULT_CONFIG_PATH == Path("/etc/edge/gateway.toml")
    if not DEFAULT_CONFIG_PATH.exists():
        rc, _, err = run("check-config")
        assert rc == 2
        assert str(DEFAULT_CONFIG_PATH) in err[0]


def test_load_checked_raises_config_error_listing_problems(setup: Setup) -> None:
    path = setup.write(setup.text(pins="[]", tls='"1.1"'))
    with pytest.raises(ConfigError) as exc:
        load_checked(path)
    assert len(exc.value.problems) == 2
    assert exc.value.exit_code == 2


# --- [e2e] ----------------------------------------------------------------------------------


def test_missing_e2e_section_names_both_choices_on_one_line(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(e2e=""))
    rc, out, err = run("check-config", "--config", str(path))
    assert (rc, out) == (2, "")
    assert len(err) == 1
    assert err[0].startswith("e2e: missing — fix: ")
    assert 'mode = "sign+encrypt"' in err[0] and 'mode = "off"' in err[0]
    assert "recipient_key" in err[0]


@pytest.mark.parametrize("section", ["[e2e]\n\n", '[e2e]\nmode = "encrypt"\n\n'])
def test_e2e_without_a_known_mode_names_both_choices(setup: Setup, run: Run,
                                                     section: str) -> None:
    path = setup.write(setup.text(e2e=section))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("e2e.mode: ")
    assert 'mode = "sign+encrypt"' in err[0] and 'mode = "off"' in err[0]
    assert "encrypt\"" not in err[0].split(" — ")[0]  # the value given is not echoed


def test_check_config_reports_the_mode(setup: Setup, run: Run) -> None:
    from edge.uplink.envelope import thumbprint

    rc, out, _ = run("check-config", "--config", str(setup.write(setup.text())))
    key = serialization.load_pem_public_key(setup.recipient.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert rc == 0
    assert f"e2e: sign+encrypt (clinic key {thumbprint(key)})" in out.splitlines()
    off = setup.write(setup.text(e2e='[e2e]\nmode = "off"\n\n'), "off.toml")
    rc, out, _ = run("check-config", "--config", str(off))
    assert rc == 0
    assert any(line.startswith("e2e: off") for line in out.splitlines())
    assert load_checked(off).e2e.enabled is False


def test_e2e_compress_is_off_by_default_and_reported_when_on(setup: Setup, run: Run) -> None:
    from edge.uplink.envelope import thumbprint

    key = serialization.load_pem_public_key(setup.recipient.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert load_checked(setup.write(setup.text())).e2e.compress is False
    rc, out, _ = run("check-config", "--config", str(setup.write(setup.text())))
    assert rc == 0 and "compress" not in out
    on = setup.e2e.replace("\n\n", "\ncompress = true\n\n")
    path = setup.write(setup.text(e2e=on), "on.toml")
    assert load_checked(path).e2e.compress is True
    rc, out, _ = run("check-config", "--config", str(path))
    assert rc == 0
    assert (f"e2e: sign+encrypt (clinic key {thumbprint(key)}), compressed (JWE zip DEF)"
            in out.splitlines())


def test_e2e_compress_with_mode_off_is_a_config_error(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(e2e='[e2e]\nmode = "off"\ncompress = true\n\n'))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("e2e.compress: ")
    assert 'mode = "sign+encrypt"' in err[0] and "fix: " in err[0]
    with pytest.raises(ConfigError):
        load_checked(path)
    # compress = false with mode off is fine: it is the default
    off = setup.write(setup.text(e2e='[e2e]\nmode = "off"\ncompress = false\n\n'), "o.toml")
    assert run("check-config", "--config", str(off))[0] == 0


def test_sign_and_encrypt_needs_a_recipient_key(setup: Setup, run: Run) -> None:
    path = setup.write(setup.text(e2e='[e2e]\nmode = "sign+encrypt"\n\n'))
    rc, _, err = run("check-config", "--config", str(path))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("e2e.recipient_key: required")


@pytest.mark.parametrize("content", ["missing", "garbage", "rsa", "p384", "private"])
def test_sign_and_encrypt_needs_a_readable_p256_public_key(setup: Setup, run: Run,
                                                           content: str) -> None:
    key_file = setup.base / "recipient.pem"
    if content == "garbage":
        key_file.write_text("not a key\n")
    elif content == "rsa":
        key_file.write_bytes(_public_pem(rsa.generate_private_key(65537, 2048)))
    elif content == "p384":
        key_file.write_bytes(_public_pem(ec.generate_private_key(ec.SECP384R1())))
    elif content == "private":
        key_file.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    e2e = f'[e2e]\nmode = "sign+encrypt"\nrecipient_key = "{key_file}"\n\n'
    rc, _, err = run("check-config", "--config", str(setup.write(setup.text(e2e=e2e))))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("e2e.recipient_key: ")
    assert "fix: " in err[0]
    assert ("does not exist" in err[0]) == (content == "missing")
