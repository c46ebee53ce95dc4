"""A development mosquitto for the demo and the tests: TLS only, on a free 127.0.0.1 port.

Renders ``config/mosquitto/mosquitto.conf.template`` and an ACL (hubs write only under their own
id, admins read everything, clinicians read their patients), starts mosquitto and waits until
it accepts connections. Never uses port 1883 and never the machine's own broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import string
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: config/ lives beside devtools/
CONF_TEMPLATE = REPO / "config" / "mosquitto" / "mosquitto.conf.template"
STARTUP_TIMEOUT_S = 10.0


def mosquitto_binary() -> str:
    """Path of mosquitto; raises (loudly) when it is not installed."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (make setup)")
    return found


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 1883:
            return port


def render_acl(
    prefix: str,
    clinicians: Mapping[str, Iterable[str]],
    admins: Iterable[str] = ("admin",),
) -> str:
    """The broker ACL: hubs write their own prefix, admins read all, clinicians read their
    patients' observations (from any hub) and hub status documents."""
    lines = [
        "# rendered by devtools/broker.py; see config/mosquitto/README.md",
        f"pattern write {prefix}/%u/#",
        "",
    ]
    for admin in admins:
        lines += [f"user {admin}", "topic read #", ""]
    for name, patients in clinicians.items():
        lines.append(f"user {name}")
        lines += [f"topic read {prefix}/+/obs/{p}" for p in patients]
        lines += [f"topic read {prefix}/+/status", ""]
    return "\n".join(lines) + "\n"


def render_config(
    *,
    port: int,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    acl_file: Path,
    log_file: Path,
    bind: str = "127.0.0.1",
    debug: bool = True,
    persistence_dir: Path | None = None,
) -> str:
    """config/mosquitto/mosquitto.conf.template with the placeholders filled in."""
    tpl = string.Template(CONF_TEMPLATE.read_text())
    return tpl.substitute(
        port=port,
        bind=bind,
        cafile=cafile,
        certfile=certfile,
        keyfile=keyfile,
        acl_file=acl_file,
        log_file=log_file,
        # As root, mosquitto drops to user "mosquitto", who cannot read our 0600 keys.
        user_line="user root" if os.geteuid() == 0 else "",
        debug_line="log_type debug" if debug else "",
        persistence="true" if persistence_dir else "false",
        persistence_location=f"{persistence_dir}/" if persistence_dir else "/nonexistent/",
    )


@dataclass
class Broker:
    """A running mosquitto. ``stop()`` / ``start()`` restart it on the same port."""

    host: str
    port: int
    conf_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) and wait until it accepts TCP connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        mark = self._log_size()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log_text()}"
                )
            if " running" in self.log_text()[mark:]:
                with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.5
                ):
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"mosquitto did not start within {STARTUP_TIMEOUT_S}s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    close = stop

    def _log_size(self) -> int:
        return len(self.log_text())

    def log_text(self) -> str:
        """The broker log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0, *, start: int = 0) -> str:
        """Wait until ``needle`` appears in the log (after offset ``start``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text[start:]:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in broker log within {timeout}s:\n{self.log_text()}")

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_dev_broker(
    workdir: Path,
    *,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    clinicians: Mapping[str, Iterable[str]],
    admins: Iterable[str] = ("admin",),
    prefix: str = "edge/v1",
    port: int | None = None,
    debug: bool = True,
    persistent: bool = False,
) -> Broker:
    """Render config + ACL into ``workdir`` and start mosquitto on ``port`` (default: free).

    ``debug`` logs every packet (what a client sent can then be proven from the log);
    ``persistent`` keeps sessions and queued messages across a restart."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port == 1883:
        raise ValueError("port 1883 belongs to the machine's own broker")
    acl = workdir / "acl"
    acl.write_text(render_acl(prefix, clinicians, admins))
    log_file = workdir / "mosquitto.log"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        render_config(
            port=port,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
            acl_file=acl,
            log_file=log_file,
            debug=debug,
            persistence_dir=workdir if persistent else None,
        )
    )
    broker = Broker(host="127.0.0.1", port=port, conf_path=conf, log_path=log_file)
    broker.start()
    return broker
