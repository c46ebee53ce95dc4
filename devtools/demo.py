"""``make demo`` (``python -m devtools.demo``): simulated devices -> gateway -> local TLS
broker -> clinic ingest -> PostgreSQL -> clinician view (terminal and web), live.

Everything runs on this machine, on loopback, from a fresh directory (``demo-run/``): a
development PKI, mosquitto with the shipped TLS + ACL configuration on a free port, a throwaway
PostgreSQL (``clinic.devdb``) set up with the ``clinic`` command (``db migrate``, ``keys init``,
the hub and patients enrolled, a demo clinician assigned to them), one ``clinic ingest``
worker, ``clinic serve`` (HTTPS on a free port with a certificate from the development CA), the
firmware simulator behind a fake BlueZ on a private D-Bus, and the gateway (``edge run``)
exactly as a hub runs it, with ``[e2e] mode = "sign+encrypt"``: the broker carries only sealed
envelopes. The terminal view shows what the clinic *stored*, read back with the clinic's keys,
and above it the web app's URL and the demo clinician's sign-in (username, password and the
current TOTP code, refreshed). It runs until Ctrl-C or ``DEMO_SECONDS`` elapse, then stops
every process it started and says where its files are.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import pyotp

from clinic import keys as clinic_keys
from clinic.config import KeysSection
from clinic.devdb import DevPostgres
from devtools.broker import Broker, free_port, ingest_identity, start_dev_broker
from devtools.pki import load_issued
from devtools.viewer import StoredReader, VitalsBoard, sign_in_lines
from edge.uplink.pki import DevPki, issue, write_cert, write_dev_pki, write_key

HUB_ID = "demo-hub"
#: the clinic's [clinic] id
CLINIC_ID = "clinic-1"
#: the one ingest worker's broker identity (certificate CN = MQTT client id): the only reader
#: of observations in the ACL
INGEST = ingest_identity(CLINIC_ID, "1")
# Which simulated device goes to which demo patient (pseudonyms, never names).
ASSIGNMENT = {"SIM-HR-1": "patient-a", "SIM-GLU-1": "patient-a", "SIM-HR-2": "patient-b"}
PATIENTS = sorted(set(ASSIGNMENT.values()))
#: the demo's clinician in the web app (assigned both demo patients)
CLINICIAN = "demo-clinician"
STARTUP_TIMEOUT_S = 30.0
#: processes whose exit ends the demo
ESSENTIAL = ("gateway", "clinic-ingest", "clinic-serve")


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


class Demo:
    """The processes of one demo run and how to stop them."""

    def __init__(self, workdir: Path, seconds: float | None) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: Broker | None = None
        self.pg: DevPostgres | None = None
        self.clinic_dir = workdir / "the-clinic"  # not "clinic": python -m puts cwd on sys.path
        self.clinic_config = self.clinic_dir / "clinic.toml"
        self.recipient_key = self.clinic_dir / "clinic-e2e.pem"
        self.web_port = free_port()
        self.web_url = f"https://127.0.0.1:{self.web_port}/"
        self.password = ""
        self.totp: pyotp.TOTP | None = None
        self.env = dict(os.environ)
        self.env["EDGE_VAULT_KEY"] = secrets.token_hex(32)
        self.env["EDGE_CONFIG"] = str(workdir / "gateway.toml")
        self.env.pop("EDGE_DEBUG", None)

    # --- set-up ---------------------------------------------------------------------------

    def make_pki(self) -> DevPki:
        _say("creating a development PKI (ECDSA P-256)")
        return write_dev_pki(
            self.workdir / "pki", hub_id=HUB_ID, clinicians={INGEST: ()}, admin="admin"
        )

    def start_broker(self, pki: DevPki) -> Broker:
        _say("starting mosquitto (mutual TLS, ACL) on a free port of 127.0.0.1")
        self.broker = start_dev_broker(
            self.workdir / "broker",
            cafile=pki.ca.cert,
            certfile=pki.broker.cert,
            keyfile=pki.broker.key,
            hubs=[HUB_ID],
            clinic_ids=[INGEST],
            debug=False,
        )
        return self.broker

    # --- the clinic -------------------------------------------------------------------------

    def start_clinic(self, pki: DevPki, broker: Broker) -> None:
        """A throwaway PostgreSQL, then the clinic set up with its own command, as an
        administrator would: schema, keys, the hub and its patients."""
        _say("starting a throwaway PostgreSQL for the clinic on a free port of 127.0.0.1")
        self.clinic_dir.mkdir(mode=0o700)
        self.pg = DevPostgres.start(self.clinic_dir / "pg")
        keys_dir = self.clinic_dir / "keys"
        ident = pki.clinicians[INGEST]
        self.clinic_config.write_text(f"""# written by `make demo`
[clinic]
id = "{CLINIC_ID}"
[db]
dsn = "{self.pg.dsn}"
[keys]
provider = "file"
dir = "{keys_dir}"
[hubs]
ca_file = "{pki.ca.cert}"
[broker]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca.cert}"
client_cert = "{ident.cert}"
client_key = "{ident.key}"
pins = ["{pki.broker.pin}", "{pki.ca.pin}"]
tls_min_version = "1.3"
topic_prefix = "edge/v1"
share_group = "clinic"
[web]
listen = "127.0.0.1:{self.web_port}"
tls_cert = "{self.clinic_dir / 'web.pem'}"
tls_key = "{self.clinic_dir / 'web.key'}"
idle_timeout_s = 900
time_zone = "UTC"
[log]
level = "info"
""")
        self.clinic_config.chmod(0o600)
        _say("clinic db migrate; clinic keys init")
        self.clinic("db", "migrate")
        self.clinic("keys", "init")
        self.recipient_key.write_text(self.clinic("keys", "public"))
        self.clinic("hubs", "enroll", HUB_ID)
        for patient in PATIENTS:
            self.clinic("patients", "add", patient, "--hub", HUB_ID)
        _say(f"enrolled {HUB_ID} and {len(PATIENTS)} patients; starting clinic ingest")
        self.spawn("clinic-ingest", [sys.executable, "-m", "clinic", "--config",
                                     str(self.clinic_config), "ingest", "--worker", "1"])

    def start_web(self, pki: DevPki) -> None:
        """A demo clinician (``clinic users add``, assigned the demo patients) and
        ``clinic serve`` on HTTPS with a server certificate from the development CA."""
        ca = load_issued(pki.ca)
        web = issue(ca, "clinic-web", server=True, dns=["localhost"], ips=["127.0.0.1"])
        write_cert(self.clinic_dir / "web.pem", web.cert)
        write_key(self.clinic_dir / "web.key", web.key)
        self.password = secrets.token_urlsafe(12)
        pw_file = self.clinic_dir / "demo-clinician.password"
        pw_file.touch(mode=0o600)
        pw_file.write_text(self.password + "\n")
        uri = self.clinic("users", "add", CLINICIAN, "--role", "clinician",
                          "--password-file", str(pw_file)).strip().splitlines()[-1]
        totp = pyotp.parse_uri(uri)
        if not isinstance(totp, pyotp.TOTP):
            raise RuntimeError("`clinic users add` printed no TOTP URI")
        self.totp = totp
        for patient in PATIENTS:
            self.clinic("patients", "assign", patient, "--clinician", CLINICIAN)
        _say("starting clinic serve (HTTPS, certificate from the development CA)")
        proc = self.spawn("clinic-serve", [sys.executable, "-m", "clinic", "--config",
                                           str(self.clinic_config), "serve"])
        self._wait_listening(proc, self.web_port)
        _say(f"clinicians' web app: {self.web_url} (CA: {pki.ca.cert})")
        _say(f"sign in as {CLINICIAN}, password {self.password}, "
             f"code {self.totp.now()} (refreshed in the view below)")

    @staticmethod
    def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
        """Until ``port`` on 127.0.0.1 accepts connections (bounded); the server's exit is
        an error at once."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("clinic serve exited; see clinic-serve.log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("clinic serve did not listen in time; see clinic-serve.log")

    def clinic(self, *args: str) -> str:
        """Run one ``clinic`` command; its output, or an error naming the command."""
        done = subprocess.run(
            [sys.executable, "-m", "clinic", "--config", str(self.clinic_config), *args],
            env=self.env, capture_output=True, timeout=120, check=False, cwd=self.workdir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`clinic {' '.join(args[:2])}` failed ({done.returncode}): "
                               f"{done.stderr.decode().strip()}")
        return done.stdout.decode()

    def clinic_reader(self) -> StoredReader:
        """Reads what the clinic stored, with the clinic's own keys."""
        assert self.pg is not None
        ring = clinic_keys.load(KeysSection(provider="file", dir=self.clinic_dir / "keys"))
        return StoredReader(self.pg.dsn, ring)

    def write_config(self, pki: DevPki, broker: Broker) -> Path:
        vault_dir = self.workdir / "vault"
        vault_dir.mkdir(mode=0o700, exist_ok=True)
        run_dir = self.workdir / "run"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        config = self.workdir / "gateway.toml"
        config.write_text(
            f"""# written by `make demo`
[hub]
id = "{HUB_ID}"

[ble]
scan_seconds = 3
reconnect_base_s = 0.5
reconnect_cap_s = 5

[vault]
path = "{vault_dir / 'vault.db'}"
key_provider = "env"
key_env = "EDGE_VAULT_KEY"
allow_env_key = true

[uplink]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca.cert}"
client_cert = "{pki.hub.cert}"
client_key = "{pki.hub.key}"
pins = ["{pki.broker.pin}", "{pki.ca.pin}"]
tls_min_version = "1.3"
status_interval_s = 5

[e2e]
mode = "sign+encrypt"
recipient_key = "{self.recipient_key}"

[log]
level = "info"
format = "json"

[clock]
# a development machine's clock is trusted as it is (a hub uses "system")
source = "assume-synchronised"

[daemon]
control_socket = "{run_dir / 'control.sock'}"
"""
        )
        config.chmod(0o600)
        return config

    def spawn(
        self, name: str, argv: list[str], *, stdout: int | IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            cwd=self.workdir,
        )
        self.procs.append((name, proc))
        return proc

    def start_simulator(self) -> str:
        _say("starting the firmware simulator: 2 heart-rate straps, 1 glucose meter with history")
        proc = self.spawn(
            "simulator",
            [sys.executable, "-m", "firmware_sim", "serve", "--devices", "hr:2,glucose:1",
             "--seed", "7"],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.startswith(b"DBUS_SYSTEM_BUS_ADDRESS="):
                break
        if not line.startswith(b"DBUS_SYSTEM_BUS_ADDRESS="):
            raise RuntimeError("the simulator did not start; see simulator.log")
        address = line.decode().strip().split("=", 1)[1]
        self.env["DBUS_SYSTEM_BUS_ADDRESS"] = address
        return address

    def edge(self, *args: str) -> str:
        """Run one ``edge`` command; its output, or an error naming the command."""
        argv = [sys.executable, "-m", "edge", *args]
        done = subprocess.run(
            argv, env=self.env, capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"`edge {args[0]}` failed ({done.returncode}): {done.stderr.decode().strip()}"
            )
        return done.stdout.decode()

    def pair_devices(self) -> None:
        _say("scanning for the simulated devices")
        found = json.loads(self.edge("scan", "--seconds", "3", "--json"))
        by_name = {d["name"]: d["address"] for d in found}
        for patient in PATIENTS:
            self.edge("consent", "grant", patient)
        for name, patient in ASSIGNMENT.items():
            if name not in by_name:
                raise RuntimeError(f"{name} was not found by the scan")
            _say(f"pairing {name} to {patient}")
            self.edge("pair", by_name[name], "--patient", patient)

    def start_gateway(self) -> subprocess.Popen[bytes]:
        _say("starting the gateway (edge run)")
        return self.spawn("gateway", [sys.executable, "-m", "edge", "run"])

    # --- the clinician's view ---------------------------------------------------------------

    def clinician_view(self, stop: threading.Event) -> None:
        """Redraw what the clinic stored (not what the broker carried: that is sealed)."""
        board = VitalsBoard()
        reader = self.clinic_reader()
        footer = "clinic stored nothing yet"
        tty = sys.stdout.isatty()
        started = time.monotonic()
        try:
            while not stop.is_set():
                with contextlib.suppress(Exception):  # the database mid-restart: redraw later
                    footer = reader.poll(board)
                table = board.render(footer)
                elapsed = time.monotonic() - started
                head = (
                    f"what the clinic stored (e2e sign+encrypt) — {elapsed:4.0f} s — "
                    f"Ctrl-C to stop — files in {self.workdir}"
                )
                if self.totp is not None:
                    head += "\n" + sign_in_lines(self.web_url, CLINICIAN, self.password,
                                                 self.totp)
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + head + "\n\n" + table + "\n")
                    sys.stdout.flush()
                elif int(elapsed) % 5 == 0:
                    print(head + "\n" + table + "\n", flush=True)
                if self.seconds is not None and elapsed >= self.seconds:
                    break
                gone = [n for n, p in self.procs
                        if n in ESSENTIAL and p.poll() is not None]
                if gone:
                    _say(f"{gone[0]} stopped unexpectedly; see {gone[0]}.log")
                    break
                stop.wait(1.0)
        finally:
            with contextlib.suppress(Exception):
                footer = reader.poll(board)
            print(board.render(footer), flush=True)

    # --- tear-down --------------------------------------------------------------------------

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _say(f"{name} did not stop in time; killing it")
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop()


@contextlib.contextmanager
def _interrupts(stop: threading.Event) -> Iterator[None]:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    old: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def main() -> int:
    """Run the demo; returns the process exit code."""
    seconds_env = os.environ.get("DEMO_SECONDS")
    seconds = float(seconds_env) if seconds_env else None
    workdir = Path(os.environ.get("DEMO_DIR", "demo-run")).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(mode=0o700, parents=True)
    demo = Demo(workdir, seconds)
    stop = threading.Event()
    rc = 0
    with _interrupts(stop):
        try:
            pki = demo.make_pki()
            broker = demo.start_broker(pki)
            demo.start_clinic(pki, broker)
            demo.start_web(pki)
            demo.write_config(pki, broker)
            demo.start_simulator()
            demo.pair_devices()
            demo.start_gateway()
            demo.clinician_view(stop)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            _say(f"failed: {exc}")
            rc = 1
        finally:
            demo.stop_all()
    _say(f"stopped every process it started. Files (PKI, config, vault, logs): {workdir}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
