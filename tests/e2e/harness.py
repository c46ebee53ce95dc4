"""The end-to-end harness: the gateway as a subprocess (``edge run``), the simulator behind
the fake BlueZ (``python -m firmware_sim serve``), a real mosquitto with a throwaway PKI, and
an admin subscriber that records what arrives.

    with E2E(tmp_path, devices="hr:1,glucose:1") as e2e:
        e2e.grant("patient-a")
        e2e.pair("SIM-HR-1", "patient-a")
        gw = e2e.gateway()               # started, ready (control socket answers)
        e2e.wait_for_ids(lambda ids: len(ids) >= 5)
        gw.stop()                        # SIGTERM, exit code

The demo (``devtools/demo.py``) does the same steps for a person instead of a test.
Everything is bounded in time; a missing binary (mosquitto, dbus-daemon) is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.bluez import ServeProcess, bluetoothctl_shim, serve_process
from tests.support.mosquitto import Broker, Received, Subscriber, start_broker, subscriber
from tests.support.pki import TestPki, make_pki

REPO = Path(__file__).resolve().parents[2]
EDGE = [sys.executable, "-m", "edge"]
HUB_ID = "hub-e2e"
READY_TIMEOUT_S = 30.0
#: the sandbox's kernel may report the clock unsynchronised; the clock tests drive it themselves
CLOCK_ASSUMED = '[clock]\nsource = "assume-synchronised"\n'


def observations(messages: list[Received]) -> list[dict[str, Any]]:
    """Every Observation resource in received Bundles (with its topic), in arrival order."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if "/obs/" not in m.topic:
            continue
        for entry in json.loads(m.payload).get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") == "Observation":
                out.append({"topic": m.topic, "resource": res, "request": entry.get("request")})
    return out


def obs_id(o: dict[str, Any]) -> str:
    """The stable reading id an Observation carries."""
    value: str = o["resource"]["identifier"][0]["value"]
    return value.removeprefix("urn:uuid:")


def obs_kind(o: dict[str, Any]) -> str:
    """``heart_rate`` or ``glucose`` from the LOINC code."""
    codes = {c.get("code") for c in o["resource"]["code"]["coding"]}
    return "heart_rate" if "8867-4" in codes else "glucose"


def obs_patient(o: dict[str, Any]) -> str:
    ref: str = o["resource"]["subject"]["reference"]
    return ref.removeprefix("Patient/")


PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
PR_GET_MDWE = 66


def deny_write_execute_in_child() -> None:
    """In a forked child before exec: refuse writable+executable memory from now on
    (inherited across exec), as systemd's MemoryDenyWriteExecute=yes does."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed")


def write_execute_is_denied_in_children() -> bool:
    """Whether a process started with :func:`deny_write_execute_in_child` really cannot map
    writable+executable memory (the restriction survives exec)."""
    probe = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    print('allowed')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, preexec_fn=deny_write_execute_in_child, check=True)
    return done.stdout.strip() == "denied"


class Gate:
    """A TCP forwarder between the gateway and the broker that can refuse new connections
    (threads, so it works from synchronous tests). Used to keep the gateway away from a
    restarted broker until the test's subscriber has re-subscribed."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.open = threading.Event()
        self.open.set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="gate").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()


@dataclass
class Gateway:
    """One ``edge run`` subprocess."""

    e2e: E2E
    proc: subprocess.Popen[bytes]
    log_path: Path

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the daemon answers ``status`` on its control socket."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"edge run exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
                )
            if self.e2e.control_socket.exists():
                done = self.e2e.edge("status", "--json", check=False)
                if done.returncode == 0:
                    status: dict[str, Any] = json.loads(done.stdout)
                    if status.get("source") == "daemon":
                        return status
                last = done.stderr
            time.sleep(0.1)
        raise AssertionError(f"edge run not ready in {timeout}s ({last}):\n{self.log_text()}")

    def status(self) -> dict[str, Any]:
        """``edge status --json`` (from this daemon while it runs)."""
        done = self.e2e.edge("status", "--json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait for the exit code; the daemon's contract is to exit within 10 s
        (TimeoutExpired otherwise)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (non-JSON lines are kept as ``{"raw": line}``)."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"raw": line})
        return out


@dataclass
class E2E:
    """The rig: PKI, broker, simulator, admin subscriber, config, and gateway processes."""

    workdir: Path
    devices: str = "hr:1,glucose:1"
    scenario: str | None = None
    seed: int = 7
    clinicians: dict[str, list[str]] = field(
        default_factory=lambda: {"clinician-1": ["patient-a", "patient-b"]}
    )
    config_extra: str = ""
    #: seal Bundles to this clinic public key (PEM): [e2e] mode = "sign+encrypt"; None: "off"
    recipient_key: Path | None = None
    #: the clinic's ingest identities (certificate CNs) the broker ACL lets read observations
    clinic_ids: list[str] = field(default_factory=list)
    #: route the gateway through a :class:`Gate` (to hold it off a restarted broker)
    gated: bool = False
    #: the broker keeps sessions and queued messages across a restart (its ``persistence``)
    persistent_broker: bool = False
    #: [uplink] status_interval_s and [daemon] health_interval_s (short for tests; the
    #: daemon benchmark uses the shipped defaults)
    status_interval_s: float = 2
    health_interval_s: float = 1
    #: the [clock] section (the clock tests give a flag-file source they drive themselves)
    clock_toml: str = CLOCK_ASSUMED
    gate: Gate | None = field(init=False, default=None)
    pki: TestPki = field(init=False)
    broker: Broker = field(init=False)
    sim: ServeProcess = field(init=False)
    sub: Subscriber = field(init=False)
    env: dict[str, str] = field(init=False)
    gateways: list[Gateway] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stack = contextlib.ExitStack()

    # --- set-up / tear-down ---------------------------------------------------------------

    def __enter__(self) -> E2E:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for gw in self.gateways:
            if gw.proc.poll() is None:
                gw.kill()
        self._stack.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.workdir, HUB_ID, clinicians=self.clinicians, hostile=())
        self.broker = start_broker(self.workdir, self.pki, debug=False,
                                   clinic_ids=self.clinic_ids,
                                   persistent=self.persistent_broker)
        self._stack.callback(self.broker.stop)
        if self.gated:
            self.gate = Gate(self.broker.port)
            self._stack.callback(self.gate.close)
        self.sub = subscriber(self.broker, self.pki, topic=f"edge/v1/{HUB_ID}/#").start()
        self._stack.callback(self.sub.stop)
        args = ["--seed", str(self.seed)]
        if self.scenario:
            args += ["--scenario", self.scenario]
        else:
            args += ["--devices", self.devices]
        self.sim = self._stack.enter_context(serve_process(args))
        shim = bluetoothctl_shim(self.workdir / "shim-bin")
        self.env = {
            **os.environ,
            "DBUS_SYSTEM_BUS_ADDRESS": self.sim.address,
            "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
            "EDGE_VAULT_KEY": secrets.token_hex(32),
            "PYTHONPATH": str(REPO),
            "NO_COLOR": "1",
        }
        self.env.pop("EDGE_DEBUG", None)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env["EDGE_CONFIG"] = str(self.write_config())

    @property
    def vault_path(self) -> Path:
        return self.workdir / "vault" / "vault.db"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "run" / "control.sock"

    def write_config(self) -> Path:
        (self.workdir / "vault").mkdir(mode=0o700, exist_ok=True)
        path = self.workdir / "gateway.toml"
        path.write_text(
            f"""[hub]
id = "{HUB_ID}"

[ble]
scan_seconds = 2
reconnect_base_s = 0.2
reconnect_cap_s = 2
connect_timeout_s = 10
stall_timeout_s = 6

[vault]
path = "{self.vault_path}"
key_provider = "env"
allow_env_key = true

{self.pki.uplink_toml(self.gate.port if self.gate else self.broker.port)}reconnect_base_s = 0.2
reconnect_cap_s = 1
status_interval_s = {self.status_interval_s:g}
ack_timeout_s = 5

{self.e2e_toml()}
[log]
level = "info"
format = "json"

{self.clock_toml}
[daemon]
control_socket = "{self.control_socket}"
health_interval_s = {self.health_interval_s:g}
shutdown_timeout_s = 6
{self.config_extra}"""
        )
        path.chmod(0o600)
        return path

    def e2e_toml(self) -> str:
        """The [e2e] section: sealed to :attr:`recipient_key`, or off (plaintext FHIR)."""
        if self.recipient_key is None:
            return '[e2e]\nmode = "off"\n'
        return f'[e2e]\nmode = "sign+encrypt"\nrecipient_key = "{self.recipient_key}"\n'

    # --- commands ---------------------------------------------------------------------------

    def edge(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one ``edge`` command with the rig's environment."""
        done = subprocess.run([*EDGE, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"edge {' '.join(args)} -> {done.returncode}: {done.stderr}")
        return done

    def sim_ctl(self, *args: str) -> str:
        """``python -m firmware_sim ctl ...`` against the running simulator."""
        done = subprocess.run(
            [sys.executable, "-m", "firmware_sim", "ctl", "--bus", self.sim.address, *args],
            env=self.env, capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"firmware_sim ctl {args} -> {done.returncode}: {done.stderr}")
        return done.stdout

    def sim_devices(self) -> dict[str, dict[str, Any]]:
        """The simulator's devices by name."""
        return {d["name"]: d for d in json.loads(self.sim_ctl("list"))}

    def address(self, name: str) -> str:
        return str(self.sim_devices()[name]["address"])

    def grant(self, patient: str) -> None:
        self.edge("consent", "grant", patient)

    def pair(self, name: str, patient: str) -> None:
        self.edge("pair", self.address(name), "--patient", patient, timeout=90)

    def gateway(self, *, ready: bool = True, env: dict[str, str] | None = None,
                deny_write_execute: bool = False, python: str | None = None) -> Gateway:
        """Start ``edge run`` (and wait until it is ready). ``deny_write_execute`` runs it as
        the unit's MemoryDenyWriteExecute=yes would (the kernel's PR_SET_MDWE); ``python``:
        another interpreter (the daemon benchmark's hub-only virtual environment)."""
        n = len(self.gateways)
        log_path = self.workdir / f"gateway-{n}.log"
        command = [python, "-m", "edge", "run"] if python else [*EDGE, "run"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                preexec_fn=deny_write_execute_in_child if deny_write_execute else None,
            )
        gw = Gateway(self, proc, log_path)
        self.gateways.append(gw)
        if ready:
            gw.wait_ready()
        return gw

    # --- what arrived -----------------------------------------------------------------------

    def observations(self) -> list[dict[str, Any]]:
        return observations(self.sub.snapshot())

    def wait_for_obs(self, pred: Callable[[list[dict[str, Any]]], bool],
                     timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait (bounded) until ``pred(observations)`` holds; returns them."""
        ok = self.sub.wait_for(lambda msgs: pred(observations(msgs)), timeout)
        obs = self.observations()
        if not ok:
            tail = self.gateways[-1].log_text()[-3000:] if self.gateways else ""
            raise AssertionError(
                f"condition not met in {timeout}s; {len(obs)} observations arrived; "
                f"gateway log tail:\n{tail}"
            )
        return obs

    def vault_rows(self) -> list[tuple[str, str, bool, str]]:
        """(id, kind, delivered, patient) of every reading in the vault, read with the key
        directly (the daemon must not be running)."""
        import sqlcipher3

        conn = sqlcipher3.connect(str(self.vault_path))
        try:
            conn.execute(f"PRAGMA key = \"x'{self.env['EDGE_VAULT_KEY']}'\"")
            rows = conn.execute(
                "SELECT id, kind, delivered_at IS NOT NULL, patient FROM readings"
            ).fetchall()
        finally:
            conn.close()
        return [(str(i), str(k), bool(d), str(p)) for i, k, d, p in rows]

    def wait_status(self, gw: Gateway, pred: Callable[[dict[str, Any]], bool],
                    timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``edge status --json`` (bounded) until ``pred`` holds; returns that status."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = gw.status()
            if pred(status):
                return status
            time.sleep(0.25)
        raise AssertionError(f"status condition not met in {timeout}s: {json.dumps(status)}\n"
                             f"{gw.log_text()[-3000:]}")

    def quiesce(self, gw: Gateway, names: list[str], timeout: float = 60.0) -> None:
        """Take the named devices away (no new readings), then wait until the queue is empty."""
        for name in names:
            self.sim_ctl("remove", name)
        self.wait_status(gw, lambda s: s.get("queue_depth") == 0, timeout)


@contextlib.contextmanager
def running(e2e: E2E, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """A gateway (with ``env`` added to the rig's) that is stopped (SIGTERM) on the way out;
    asserts a clean exit."""
    gw = e2e.gateway(env=env)
    try:
        yield gw
    finally:
        rc = gw.stop()
        assert rc == 0, f"edge run exited with {rc}:\n{gw.log_text()[-3000:]}"
