"""The soak runner: the whole gateway for a bounded time under scheduled faults.

The rig is the end-to-end harness's (:class:`tests.e2e.harness.E2E`), set up as the daemon
benchmark does (``bench.daemon_bench.pair_all`` / ``wait_connected``: consent, every device
paired over the CLI, ``edge run`` with the shipped intervals), with two differences that make
the count of lost readings honest across broker restarts: the broker is *persistent* (sessions
and queued messages survive a restart) and the gateway reaches it through the harness's
:class:`~tests.e2e.harness.Gate`, closed while the broker restarts until the observer has
subscribed again. The observer is a development identity that reads every topic with a
persistent session; it keeps only the Observation identifiers it receives.

Then, for ``minutes``: the actions of :func:`soak.schedule.build_schedule` at their times, and
every ``sample_every_s`` one line with the daemon's RSS (``/proc/PID/status`` VmRSS), open
file descriptors (``/proc/PID/fd``), queue depth and readings delivered. At the end every
simulated device is removed (nothing new arrives), the daemon drains its queue (bounded), stops
(SIGTERM, exit 0 expected), and the vault is read directly: :mod:`soak.accounting` says what
was lost. Everything runs on 127.0.0.1; every process is stopped on the way out, also on
Ctrl-C and on failure.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as paho

from bench.daemon_bench import pair_all, wait_connected
from soak.accounting import (
    Accounting,
    Resources,
    account,
    intake_accepted,
    resources,
    verdict,
)
from soak.schedule import FAULT_KINDS, Action, Rates, build_schedule
from tests.e2e.harness import E2E, HUB_ID, Gateway
from tests.support.mosquitto import Subscriber

#: a real disk, as the daemon benchmark uses (/tmp may be a small tmpfs)
DISK = Path("/var/tmp")  # noqa: S108 (a private mkdtemp directory under it)


@dataclass
class SoakConfig:
    minutes: float
    seed: int = 1
    hr: int = 35
    glucose: int = 15
    sample_every_s: float = 30.0
    rates: Rates = field(default_factory=Rates)
    workdir: Path | None = None
    keep: bool = False
    #: open fds may grow by this much from the first sample to the last
    fd_growth_limit: int = 32
    connect_timeout_s: float = 180.0
    drain_timeout_s: float = 300.0
    #: [uplink] status_interval_s and [daemon] health_interval_s (the shipped ones by default)
    status_interval_s: float = 60
    health_interval_s: float = 5
    #: the interpreter ``edge run`` runs on; None: this one (``python -m soak`` passes the
    #: hub-only environment of :mod:`bench.product_venv`, so resident memory is a hub's)
    python: str | None = None


@dataclass
class SoakResult:
    seconds: float
    setup_s: float
    drain_s: float
    devices: int
    connected: int
    accounting: Accounting
    resources: Resources
    refusals: dict[str, int]
    faults: dict[str, int]
    skipped: dict[str, int]
    uplink_connections: int
    daemon_exit: int | None
    problems: list[str]
    workdir: Path

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the observer -----------------------------------------------------------------------------


@dataclass
class IdObserver(Subscriber):
    """A :class:`Subscriber` that keeps only how often each Observation identifier arrived
    (a 30-minute soak would otherwise hold every Bundle in memory)."""

    received: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if "/obs/" not in msg.topic:
            return
        ids: list[str] = []
        try:
            for entry in json.loads(msg.payload).get("entry", []):
                res = entry.get("resource", {})
                if res.get("resourceType") == "Observation":
                    for ident in res.get("identifier", []):
                        value = str(ident.get("value", ""))
                        if value.startswith("urn:uuid:"):
                            ids.append(value.removeprefix("urn:uuid:"))
        except (ValueError, AttributeError, TypeError):
            with self._cond:
                self.unreadable += 1
            return
        with self._cond:
            self.received.update(ids)
            self._cond.notify_all()

    def counts(self) -> Counter[str]:
        with self._cond:
            return Counter(self.received)

    def wait_distinct(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= n, timeout)


# --- /proc ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


# --- the run ----------------------------------------------------------------------------------


class Runner:
    def __init__(self, cfg: SoakConfig, e2e: E2E, observer: IdObserver, out: TextIO) -> None:
        self.cfg, self.e2e, self.observer, self.out = cfg, e2e, observer, out
        self.faults: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.samples: list[tuple[float, float, int]] = []
        self.t0 = time.monotonic()
        self.problems: list[str] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=self.out, flush=True)

    def act(self, a: Action) -> None:
        e2e = self.e2e
        try:
            if a.op == "drop":
                assert a.device is not None
                dropped = json.loads(e2e.sim_ctl("drop", a.device)).get("dropped")
                if not dropped:
                    self.skipped["link_drop"] += 1
                    self.say(f"fault skipped: {a.describe()} (not connected)")
                    return
            elif a.op == "restart_broker":
                self.restart_broker()
            elif a.op == "malformed_on":
                assert a.device is not None
                e2e.sim_ctl("fault", a.device, f"malformed={a.malformed}",
                            f"malformed_every={a.nth}")
            else:
                assert a.device is not None
                e2e.sim_ctl("fault", a.device, "malformed=null", "malformed_every=1")
        except AssertionError as exc:
            self.problems.append(f"could not inject {a.describe()}: {exc}")
            self.say(f"fault FAILED: {a.describe()}: {exc}")
            return
        if a.kind is not None:
            self.faults[a.kind] += 1
        self.say(f"fault: {a.describe()}")

    def restart_broker(self) -> None:
        """Stop and start mosquitto on the same port with the same configuration; the
        gateway is held off (the gate) until the observer has subscribed again."""
        gate = self.e2e.gate
        assert gate is not None
        gate.open.clear()
        try:
            self.observer.reset_subscribed()
            self.e2e.broker.stop()
            self.e2e.broker.start()
            self.observer.wait_subscribed(60)
        finally:
            gate.open.set()

    def sample(self, gw: Gateway, note: str = "", *, keep: bool = True) -> None:
        """Print one sample line; ``keep`` it for the figures (the samples taken while the
        devices are there: removing them at the end would hide a leak tied to a device)."""
        pid = gw.proc.pid
        t = time.monotonic() - self.t0
        rss, fds = rss_mb(pid), open_fds(pid)
        if keep:
            self.samples.append((t, rss, fds))
        queue: object = "?"
        delivered: object = "?"
        try:
            status = gw.status()
            queue = status.get("queue_depth")
            delivered = ((status.get("uplink") or {}).get("stats") or {}).get(
                "readings_delivered")
        except (AssertionError, ValueError, OSError) as exc:
            note = f"{note} (status failed: {str(exc)[:120]})"
        self.say(f"rss {rss:6.1f} MB  fds {fds:4d}  queue {queue}  delivered {delivered}  "
                 f"seen {len(self.observer.counts())}{note}")

    def alive(self, gw: Gateway) -> bool:
        rc = gw.proc.poll()
        if rc is None:
            return True
        self.problems.append(f"the daemon died during the soak (exit {rc}); log: {gw.log_path}")
        return False

    def run_schedule(self, gw: Gateway, actions: tuple[Action, ...], seconds: float) -> bool:
        """Follow the schedule for ``seconds``; False if the daemon died."""
        start = time.monotonic()
        pending = list(actions)
        next_sample = self.cfg.sample_every_s
        while True:
            now = time.monotonic() - start
            if not self.alive(gw):
                return False
            while pending and pending[0].at_s <= now:
                self.act(pending.pop(0))
            if now >= next_sample:
                self.sample(gw)
                next_sample += self.cfg.sample_every_s
            if now >= seconds and not pending:
                return True
            due = min([seconds, next_sample] + ([pending[0].at_s] if pending else []))
            time.sleep(max(0.0, min(1.0, due - (time.monotonic() - start))))


def wait_until(pred: Callable[[], bool], timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def run_soak(cfg: SoakConfig, out: TextIO = sys.stdout) -> SoakResult:
    """One soak; every process stopped when it returns or raises."""
    if cfg.minutes <= 0:
        raise ValueError("minutes must be > 0")
    DISK.mkdir(exist_ok=True)
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="edge-soak-", dir=DISK))
    devices = ",".join(s for s in (f"hr:{cfg.hr}" if cfg.hr else "",
                                   f"glucose:{cfg.glucose}" if cfg.glucose else "") if s)
    seconds = cfg.minutes * 60
    t_setup = time.monotonic()
    with E2E(workdir, devices=devices, seed=cfg.seed, gated=True, persistent_broker=True,
             status_interval_s=cfg.status_interval_s,
             health_interval_s=cfg.health_interval_s) as e2e:
        e2e.sub.stop()  # the harness's subscriber keeps whole messages; ours keeps ids
        observer = IdObserver(broker=e2e.broker, identity=e2e.pki.admin, ca=e2e.pki.ca.cert,
                              topic=f"edge/v1/{HUB_ID}/obs/+", client_id="soak-observer",
                              persistent_session=True)
        observer.start()
        try:
            result = _soak(cfg, e2e, observer, out, workdir, seconds, t_setup)
        finally:
            observer.stop()
    if result.ok and not cfg.keep and cfg.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _soak(cfg: SoakConfig, e2e: E2E, observer: IdObserver, out: TextIO, workdir: Path,
          seconds: float, t_setup: float) -> SoakResult:
    runner = Runner(cfg, e2e, observer, out)
    runner.say(f"workdir {workdir}; pairing {cfg.hr} heart-rate straps and "
               f"{cfg.glucose} glucose meters over the CLI")
    n = pair_all(e2e)
    gw = e2e.gateway(python=cfg.python)
    up = wait_connected(gw, n, cfg.connect_timeout_s)
    runner.say(f"{up}/{n} devices connected; soak of {seconds:g} s begins (seed {cfg.seed})")
    setup_s = time.monotonic() - t_setup
    kinds = {name: str(d["kind"]) for name, d in e2e.sim_devices().items()}
    names = sorted(kinds)
    actions = build_schedule(cfg.seed, seconds, kinds, cfg.rates)
    runner.sample(gw, "  (start)")
    t_run = time.monotonic()
    alive = runner.run_schedule(gw, actions, seconds)
    run_s = time.monotonic() - t_run
    drain_s = 0.0
    status: dict[str, Any] = {}
    rc: int | None = None
    if alive:
        runner.sample(gw, "  (end of faults)")
        runner.say("removing every simulated device; draining")
        t_drain = time.monotonic()
        for name in names:
            try:
                e2e.sim_ctl("remove", name)
            except AssertionError as exc:
                runner.problems.append(f"could not remove {name}: {exc}")

        def drained() -> bool:
            nonlocal status
            if gw.proc.poll() is not None:
                return True
            try:
                status = gw.status()
            except AssertionError:
                return False
            return status.get("queue_depth") == 0

        if not wait_until(drained, cfg.drain_timeout_s):
            runner.problems.append(f"the queue did not drain in {cfg.drain_timeout_s:g} s "
                                   f"(depth {status.get('queue_depth')})")
        if runner.alive(gw):
            # what the forwarder had acknowledged should reach the observer soon after
            observer.wait_distinct(intake_accepted(status.get("intake") or {}), 30)
            status = gw.status()
            drain_s = time.monotonic() - t_drain
            runner.sample(gw, "  (drained; not in the figures)", keep=False)
            rc = gw.stop(15)
            if rc != 0:
                runner.problems.append(f"edge run exited with {rc} on SIGTERM; "
                                       f"log: {gw.log_path}")
    if gw.proc.poll() is None:
        gw.kill()
    if rc is None:
        rc = gw.proc.returncode
    rows = [(rid, delivered) for rid, _, delivered, _ in e2e.vault_rows()]
    acc = account(rows, observer.counts(), intake_accepted(status.get("intake") or {}))
    res = resources(runner.samples)
    connections = sum(1 for ev in gw.log_events() if ev.get("event") == "uplink.connected")
    restarts = runner.faults["broker_restart"]
    if alive and connections < restarts + 1:
        runner.problems.append(f"the uplink connected {connections} times for {restarts} "
                               "broker restarts: it did not reconnect after each")
    if observer.unreadable:
        runner.problems.append(f"{observer.unreadable} observation messages were unreadable")
    refusals = {k: int(v) for k, v in (status.get("refusals") or {}).items() if v}
    problems = verdict(acc, res, fd_growth_limit=cfg.fd_growth_limit) + runner.problems
    return SoakResult(
        seconds=run_s, setup_s=setup_s, drain_s=drain_s, devices=n, connected=up,
        accounting=acc, resources=res, refusals=refusals,
        faults={k: runner.faults[k] for k in FAULT_KINDS},
        skipped=dict(runner.skipped), uplink_connections=connections, daemon_exit=rc,
        problems=problems, workdir=workdir,
    )


def summary(r: SoakResult, cfg: SoakConfig) -> str:
    a, m = r.accounting, r.resources
    offered = a.intake_accepted + sum(r.refusals.values())
    faults = ", ".join(f"{k} {v}" for k, v in r.faults.items())
    skipped = ", ".join(f"{k} {v}" for k, v in r.skipped.items()) or "none"
    refusals = ", ".join(f"{k} {v}" for k, v in sorted(r.refusals.items())) or "none"
    lines = [
        "soak summary",
        f"  duration     {r.seconds / 60:.1f} min under faults (set-up {r.setup_s:.0f} s, "
        f"drain {r.drain_s:.0f} s); seed {cfg.seed}",
        f"  devices      {r.devices} paired ({cfg.hr} heart rate, {cfg.glucose} glucose), "
        f"{r.connected} connected before the faults began",
        f"  readings     offered {offered} (accepted + refused, as the hub counted them; the "
        "simulator does not count what it generated)",
        f"               accepted {a.accepted} (vault rows; intake counted {a.intake_accepted})",
        f"               delivered {a.seen} (received by the observer; {a.acked} acknowledged "
        f"in the vault; {a.repeats} repeats)",
        f"               lost {a.lost} (pending {a.unseen_pending}, acknowledged but never "
        f"received {a.unseen_acked}, missing from the vault {a.missing_from_vault}); "
        f"unknown received {a.unknown_seen}",
        f"  refusals     {refusals}",
        f"  faults       {faults}; skipped: {skipped}; uplink connections {r.uplink_connections}",
        f"  rss MB       start {m.rss_start:.1f}  max {m.rss_max:.1f}  end {m.rss_end:.1f}  "
        f"slope {m.rss_slope_mb_h:+.1f} MB/h (second half {m.rss_late_slope_mb_h:+.1f} MB/h)",
        f"  open fds     start {m.fds_start}  max {m.fds_max}  end {m.fds_end}  "
        f"(growth limit {cfg.fd_growth_limit})",
        f"  daemon exit  {r.daemon_exit}",
    ]
    if r.ok:
        lines.append("  result       PASS")
    else:
        lines.append("  result       FAIL")
        lines += [f"    - {p}" for p in r.problems]
        lines.append(f"  files        {r.workdir} (kept)")
    return "\n".join(lines)
