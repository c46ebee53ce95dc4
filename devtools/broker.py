"""A development mosquitto for the demo and the tests: TLS only, on a free 127.0.0.1 port.

Renders ``config/mosquitto/mosquitto.conf.template`` and an ACL generated from the enrolment
(:func:`render_acl`: each enrolled hub writes only its own status and observation topics, the
clinic's ingest identities are the only readers, people get nothing), starts mosquitto and waits
until it accepts connections. Never uses port 1883 and never the machine's own broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


#: the identities a certificate CN may name: what mosquitto's ACL and a topic level can hold
_IDENTITY_FORBIDDEN = frozenset("/+#\0")


def ingest_identity(clinic_id: str, worker: str) -> str:
    """The CN of one ``clinic ingest --worker NAME`` certificate, which is also its MQTT client
    id (the broker sets client id = CN): ``<clinic.id>-ingest-<NAME>``."""
    return f"{clinic_id}-ingest-{worker}"


def _check_identity(name: str, role: str) -> str:
    if (
        not name
        or name != name.strip()
        or any(c.isspace() or not c.isprintable() or c in _IDENTITY_FORBIDDEN for c in name)
        or name.startswith("$")
    ):
        raise ValueError(
            f"{role} identity {name!r} cannot be a certificate CN in the ACL "
            "(empty, whitespace, control characters, '/', '+', '#' or a leading '$')"
        )
    return name


def _check_prefix(prefix: str) -> str:
    levels = prefix.split("/")
    if not prefix or prefix.startswith("$") or any(
        not lvl or any(c in "+#\0" or c.isspace() for c in lvl) for lvl in levels
    ):
        raise ValueError(f"topic prefix {prefix!r} must be plain topic levels (no wildcards)")
    return prefix


def render_acl(
    prefix: str = "edge/v1",
    clinicians: Mapping[str, Iterable[str]] | Iterable[str] = (),
    admins: Iterable[str] = ("admin",),
    *,
    hubs: Iterable[str] = (),
    clinic_ids: Iterable[str] = (),
    observers: Iterable[str] = (),
) -> str:
    """The broker ACL, generated from the enrolment: one block per identity, no ``pattern``.

    - ``hubs``: enrolled hub ids (= their certificate CNs). Each may write only
      ``<prefix>/<id>/status`` and ``<prefix>/<id>/obs/+``; nothing else, and read nothing.
    - ``clinic_ids``: the clinic service's identities, one per ingest worker
      (:func:`ingest_identity`). The only readers of ``<prefix>/+/obs/+`` and
      ``<prefix>/+/status``; they write nothing.
    - ``clinicians``: accepted for old callers (a name -> patients mapping or names); they get
      an explicit ``deny`` on everything: clinicians use the clinic's web application.
    - ``admins``: the broker's own metrics (``$SYS/#``), nothing under the prefix.
    - ``observers``: **development only** — read every topic (what the broker operator sees:
      sealed envelopes with e2e on). Never in a production ACL.

    An identity without a block is denied everything (mosquitto's default with no ``pattern``
    lines), so a certificate the CA issued to anyone else can neither publish nor read.
    """
    prefix = _check_prefix(prefix)
    roles: dict[str, str] = {}

    def claim(names: Iterable[str], role: str) -> list[str]:
        out = []
        for raw in names:
            name = _check_identity(raw, role)
            if name in roles and {roles[name], role} != {"admin", "observer"}:
                raise ValueError(
                    f"identity {name!r} is both {roles[name]} and {role}: one certificate CN, "
                    "one role (the broker knows a client only by its CN)"
                )
            roles.setdefault(name, role)
            if name not in out:
                out.append(name)
        return out

    hub_ids = claim(hubs, "hub")
    clinic = claim(clinic_ids, "clinic")
    people = claim(clinicians.keys() if isinstance(clinicians, Mapping) else clinicians,
                   "clinician")
    admin_ids = claim(admins, "admin")
    observer_ids = claim(observers, "observer")

    lines = [
        "# rendered by devtools/broker.py (render_acl); see config/mosquitto/README.md",
        "# No `pattern` lines: they would apply to every certificate the CA issues. An identity",
        "# (certificate CN) without a block below may neither publish nor receive anything.",
        "",
    ]
    for hub in hub_ids:
        lines += [
            f"# hub {hub}: its own status document (retained, Last Will) and its Bundles",
            f"user {hub}",
            f"topic write {prefix}/{hub}/status",
            f"topic write {prefix}/{hub}/obs/+",
            "",
        ]
    for name in clinic:
        lines += [
            "# the clinic service (one identity per ingest worker): the only reader",
            f"user {name}",
            f"topic read {prefix}/+/obs/+",
            f"topic read {prefix}/+/status",
            "",
        ]
    for name in admin_ids:
        lines += [f"# admin {name}: broker metrics only", f"user {name}", "topic read $SYS/#"]
        if name in observer_ids:
            lines += ["# development observer: reads every topic (never in production)",
                      "topic read #"]
        lines.append("")
    for name in observer_ids:
        if name not in admin_ids:
            lines += ["# development observer: reads every topic (never in production)",
                      f"user {name}", "topic read #", ""]
    for name in people:
        lines += [
            f"# clinician {name}: no broker access (the clinic's web application serves them)",
            f"user {name}",
            "topic deny #",
            "",
        ]
    return "\n".join(lines)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a SIGHUP reload never sees half
    a file; an existing file's looser mode is not kept)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


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
    #: the rendered ACL (0600); rewrite it with :func:`write_private`, then :meth:`reload`
    acl_path: Path | None = None

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

    def reload(self) -> int:
        """SIGHUP: mosquitto re-reads its configuration and ACL (an enrolment changed). Returns
        the log offset to wait from for ``"Reloading config."``."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        mark = self._log_size()
        self.proc.send_signal(signal.SIGHUP)
        return mark

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
    clinicians: Mapping[str, Iterable[str]] | Iterable[str] = (),
    admins: Iterable[str] = ("admin",),
    hubs: Iterable[str] | None = None,
    clinic_ids: Iterable[str] = (),
    observers: Iterable[str] = (),
    prefix: str = "edge/v1",
    port: int | None = None,
    debug: bool = True,
    persistent: bool = False,
) -> Broker:
    """Render config + ACL into ``workdir`` and start mosquitto on ``port`` (default: free).

    ``hubs`` (required) are the enrolled hub ids and ``clinic_ids`` the clinic's ingest
    identities (see :func:`render_acl` for what each role may do; ``clinicians`` are accepted
    and get nothing). ``debug`` logs every packet (what a client sent can then be proven from
    the log); ``persistent`` keeps sessions and queued messages across a restart."""
    if hubs is None:
        raise ValueError(
            "start_dev_broker needs hubs=[...]: the ACL is generated from the enrolled hub ids "
            "(no certificate may write under its own CN any more; see config/mosquitto/README.md)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port == 1883:
        raise ValueError("port 1883 belongs to the machine's own broker")
    acl = workdir / "acl"
    write_private(
        acl,
        render_acl(prefix, clinicians, admins, hubs=hubs, clinic_ids=clinic_ids,
                   observers=observers),
    )
    log_file = workdir / "mosquitto.log"
    conf = workdir / "mosquitto.conf"
    write_private(
        conf,
        render_config(
            port=port,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
            acl_file=acl,
            log_file=log_file,
            debug=debug,
            persistence_dir=workdir if persistent else None,
        ),
    )
    broker = Broker(
        host="127.0.0.1", port=port, conf_path=conf, log_path=log_file, acl_path=acl
    )
    broker.start()
    return broker
