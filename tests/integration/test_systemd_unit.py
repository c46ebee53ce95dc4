"""The shipped unit: hardening score, verification, the pieces it relies on, install.sh."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge.service"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is required for this test (apt-get install systemd)"
    return exe


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_security_exposure_is_at_most_1_5() -> None:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for edge\.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 1.5, proc.stdout


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart exists; the real path only exists once installed.
    text = UNIT.read_text()
    copy = tmp_path / "edge.service"
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text))
    proc = subprocess.run([_analyze(), "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_has_what_the_daemon_needs() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30"]
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == ["edge"]
    assert d["SupplementaryGroups"] == ["bluetooth"]
    assert d["StateDirectory"] == ["edge"] and d["StateDirectoryMode"] == ["0700"]
    assert d["RuntimeDirectory"] == ["edge"]
    assert d["ConfigurationDirectory"] == ["edge"]
    creds = " ".join(d.get("LoadCredentialEncrypted", []) + d.get("LoadCredential", []))
    assert "vault-key:" in creds and "client-key:" in creds
    # D-Bus to BlueZ is AF_UNIX, the broker is AF_INET/6; nothing else
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["IPAddressDeny"] == ["any"]
    assert d["UMask"] == ["0077"]
    # the daemon's shutdown budget fits inside the stop timeout
    assert int(d["TimeoutStopSec"][0]) > 10
    assert "edge run" in d["ExecStart"][0]


def test_sysusers_and_tmpfiles() -> None:
    sysusers = (ROOT / "systemd/sysusers.d/edge.conf").read_text()
    assert re.search(r"(?m)^u edge ", sysusers)
    assert re.search(r"(?m)^m edge bluetooth$", sysusers)
    tmpfiles = (ROOT / "systemd/tmpfiles.d/edge.conf").read_text()
    assert re.search(r"(?m)^d /var/lib/edge\s+0700 edge edge", tmpfiles)
    assert re.search(r"(?m)^d /etc/edge/credstore\s+0700 root root", tmpfiles)


def test_install_script_stages_idempotently(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest)}
    script = str(ROOT / "systemd/install.sh")
    first = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    cfg = dest / "etc/edge/gateway.toml"
    key = dest / "etc/edge/credstore/vault-key"
    assert (dest / "etc/systemd/system/edge.service").read_text() == UNIT.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert len(key.read_text().strip()) == 64
    assert stat.S_IMODE((dest / "var/lib/edge").stat().st_mode) == 0o700
    # the second run changes neither the config nor the key
    cfg.write_text("# edited by the operator\n")
    key_before = key.read_bytes()
    second = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert cfg.read_text() == "# edited by the operator\n"
    assert key.read_bytes() == key_before
    assert "left as it is" in second.stdout
