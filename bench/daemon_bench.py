"""Daemon benchmark: the whole gateway (``edge run`` as a subprocess) at 50 simulated devices.

The rig is the end-to-end harness's (:class:`tests.e2e.harness.E2E`): a throwaway PKI, a real
mosquitto (mutual TLS, ACL) on a free loopback port, the firmware simulator with 35 heart-rate
straps and 15 glucose meters behind the fake BlueZ on a private D-Bus, consent granted and every
device paired over the CLI (``edge consent grant``, ``edge pair``), then ``edge run`` with the
shipped intervals (status every 60 s, health every 5 s), from a virtual environment holding
only what a hub installs (:mod:`bench.product_venv`). Everything lives under ``/var/tmp``: a
real disk (``write_bytes`` does not count tmpfs).

Once every device is connected and a warm-up has passed, a measurement window reads the
daemon's ``/proc/PID/io``, ``/proc/PID/stat`` and ``/proc/PID/status`` (all its threads) and
the readings the forwarder had acknowledged (``uplink.stats.readings_delivered``) at both ends:

- ``daemon.disk_bytes_per_reading``: ``write_bytes`` / readings forwarded in the window;
  ``daemon.disk_gb_per_day`` the same per day at the window's rate;
- ``daemon.cpu_ms_per_reading``: (utime + stime) / readings forwarded;
- ``daemon.rss_mb``: resident memory after ``--rss-minutes`` (10; quick 2) more of the same
  load; ``daemon.rss_growth_mb_per_h``: the least-squares slope of RSS sampled every 5 s over
  the second half of that time (bounded caches fill in the first minutes);
- ``daemon.fsyncs_per_s``: fsync + fdatasync calls counted by ``strace -f -c`` over a
  sub-window after the main one (strace slows the process: counts only, not timing).

Then ``daemon.week_backlog_drain_s``: a new vault filled offline through the vault API with a
backlog of pending readings (200,000; 50,000 with ``--quick``), the broker up, ``edge run``
started, and the time from ready to an empty queue measured, then extrapolated LINEARLY to a
week offline at 10 readings/s (6,048,000 readings); ``measured_s`` and ``backlog`` say what was
really timed. ``vault.bytes_per_pending_reading`` (the vault's size holding such a backlog) is
measured by the vault benchmark.

``--profile SECONDS`` also samples the daemon with py-spy for that long after the window and
prints the top functions (own and total samples) to stderr, with the raw output kept.

Run: ``python -m bench daemon`` or ``python -m bench.daemon_bench [--quick] [--profile 30]``.
The machine's load average is printed with the figures: other work on the box skews them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import bench
from bench.product_venv import hub_python
from bench.tracing import count_fsyncs, profile, say
from edge.daemon.status import CONNECTED_STATES
from edge.log import configure_logging
from soak.accounting import second_half, slope
from tests.e2e.harness import E2E, Gateway

TARGETS: dict[str, tuple[str, float]] = {
    "daemon.disk_bytes_per_reading": ("<=", 2048),
    "daemon.disk_gb_per_day": ("<=", 6),
    "daemon.cpu_ms_per_reading": ("<=", 0.5),
    "daemon.rss_mb": ("<=", 80),
    "daemon.rss_growth_mb_per_h": ("<=", 5),
    "daemon.fsyncs_per_s": ("<=", 2),
    # Provisional: a week offline forwarded within an hour of the broker's return.
    "daemon.week_backlog_drain_s": ("<=", 3600),
}
#: stretch goal, printed beside the target
STRETCH_BYTES_PER_READING = 512
#: a real disk: write_bytes does not count tmpfs
DISK = Path("/var/tmp")
HR, GLUCOSE = 35, 15
#: devices per patient (each patient has consent granted before pairing)
PER_PATIENT = 5
#: a week offline at 10 readings/s
WEEK_READINGS = 10 * 86400 * 7
CONNECT_TIMEOUT_S = 180.0


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    """One figure of this benchmark (see :func:`bench.emit`)."""
    bench.emit(figure, value, unit, TARGETS, **extra)


def load() -> str:
    """The load averages (1, 5, 15 min): the box is shared, the figures are noisy."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """What /proc says about one process (all its threads) at one instant."""

    at: float
    write_bytes: int
    cancelled_write_bytes: int
    syscw: int
    cpu_s: float
    rss_mb: float


def sample(pid: int) -> Sample:
    io = dict(
        (k, int(v)) for k, v in
        (line.split(":") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    )
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return Sample(time.monotonic(), io["write_bytes"], io["cancelled_write_bytes"],
                  io["syscw"], cpu, rss_kb / 1024)


def rss_parts(pid: int) -> dict[str, float]:
    """VmRSS split as the kernel counts it: anonymous memory (the daemon's own) and mapped
    files (shared libraries: how many of their pages are mapped depends on the page cache, e.g.
    a freshly installed library maps more of itself)."""
    parts: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            parts[f"{key[3:].lower()}_mb"] = round(int(value.split()[0]) / 1024, 1)
    return parts


def uplink(gw: Gateway) -> tuple[int, int]:
    """Readings the daemon's forwarder has had acknowledged (PUBACK) since it started, and
    messages it sent."""
    stats = gw.status()["uplink"]["stats"] or {}
    return int(stats.get("readings_delivered", 0)), int(stats.get("messages_sent", 0))


# --- the rig ----------------------------------------------------------------------------------


@contextlib.contextmanager
def rig(workdir: Path, devices: str) -> Iterator[E2E]:
    """The end-to-end rig with the shipped daemon intervals, every process stopped on the way
    out (also on Ctrl-C: SIGINT raises KeyboardInterrupt through the ``with``). The rig's own
    subscriber is stopped: nothing here reads what arrives (the broker drops it)."""
    with E2E(workdir, devices=devices, status_interval_s=60, health_interval_s=5) as e2e:
        e2e.sub.stop()
        yield e2e


def pair_all(e2e: E2E) -> int:
    """Grant consent to one patient per ``PER_PATIENT`` devices, then pair every simulated
    device over the CLI; how many were paired."""
    devices = sorted(e2e.sim_devices().values(), key=lambda d: str(d["name"]))
    patients = [f"patient-{i // PER_PATIENT}" for i in range(len(devices))]
    for p in sorted(set(patients)):
        e2e.grant(p)
    for d, p in zip(devices, patients, strict=True):
        e2e.edge("pair", str(d["address"]), "--patient", p, timeout=90)
    return len(devices)


def wait_connected(gw: Gateway, n: int, timeout: float) -> int:
    """Wait (bounded) until all ``n`` devices have been seen: connected now, or synced once (a
    glucose meter may disconnect between syncs); how many were."""
    deadline = time.monotonic() + timeout
    up = 0
    while time.monotonic() < deadline:
        devices = gw.status().get("devices", [])
        up = sum(1 for d in devices if d.get("state") in CONNECTED_STATES or d.get("last_seen"))
        if up >= n:
            return up
        time.sleep(2)
    return up


def steady_state(workdir: Path, warmup: float, window: float, fsync_s: float,
                 profile_s: int, rss_minutes: float, dev_venv: bool = False) -> None:
    devices = f"hr:{HR},glucose:{GLUCOSE}"
    python = Path(sys.executable) if dev_venv else hub_python()
    with rig(workdir, devices) as e2e:
        t = time.monotonic()
        n = pair_all(e2e)
        say(f"paired {n} devices over the CLI in {time.monotonic() - t:.0f} s")
        gw = e2e.gateway(python=str(python))
        pid = gw.proc.pid
        up = wait_connected(gw, n, CONNECT_TIMEOUT_S)
        say(f"{up}/{n} devices connected; warm-up {warmup:g} s (load {load()})")
        time.sleep(warmup)
        (d0, m0), s0 = uplink(gw), sample(pid)
        rss: list[tuple[float, float]] = [(s0.at, s0.rss_mb)]
        end = s0.at + window
        while (now := time.monotonic()) < end:
            time.sleep(min(1.0, end - now))
            s = sample(pid)
            rss.append((s.at, s.rss_mb))
        s1, (d1, m1) = sample(pid), uplink(gw)
        elapsed = s1.at - s0.at
        forwarded = d1 - d0
        window_load = load()
        say(f"window {elapsed:.1f} s: {forwarded} readings forwarded "
            f"({forwarded / elapsed:.1f}/s), load {window_load}")
        ctx: dict[str, Any] = {"window_s": round(elapsed, 1), "readings": forwarded,
                               "readings_per_s": round(forwarded / elapsed, 1),
                               "readings_per_message": round(forwarded / max(1, m1 - m0), 2),
                               "devices_connected": up, "load": window_load}
        if forwarded <= 0:
            raise RuntimeError(f"no readings forwarded in the window:\n{gw.log_text()[-3000:]}")
        wb = s1.write_bytes - s0.write_bytes
        per = wb / forwarded
        emit("daemon.disk_bytes_per_reading", per, "bytes",
             stretch=f"<= {STRETCH_BYTES_PER_READING}",
             stretch_met=per <= STRETCH_BYTES_PER_READING, write_bytes=wb,
             cancelled_write_bytes=s1.cancelled_write_bytes - s0.cancelled_write_bytes,
             write_calls_per_s=round((s1.syscw - s0.syscw) / elapsed, 1), **ctx)
        emit("daemon.disk_gb_per_day", wb / elapsed * 86400 / 1e9, "GB/day", **ctx)
        emit("daemon.cpu_ms_per_reading", (s1.cpu_s - s0.cpu_s) * 1000 / forwarded, "ms",
             cpu_share=round((s1.cpu_s - s0.cpu_s) / elapsed, 3), **ctx)
        window_rss = slope([a for a, _ in rss], [m for _, m in rss]) * 3600
        counted = count_fsyncs(pid, fsync_s)
        if counted is not None:
            calls, _ = counted
            emit("daemon.fsyncs_per_s", calls / fsync_s, "1/s", source="strace -f -c",
                 sub_window_s=fsync_s, fsyncs=calls, load=load())
        if profile_s > 0:
            profile(pid, profile_s, workdir / "daemon-profile.raw")
        rss_phase(pid, rss_minutes, window_rss, python)
        rc = gw.stop(15)
        if rc != 0:
            say(f"edge run exited with {rc}")


def rss_phase(pid: int, minutes: float, window_growth: float, python: Path) -> None:
    """Resident memory over ``minutes`` more of the same load, sampled every 5 s. The slope is
    taken over the second half: bounded caches (SQLCipher's page cache, structlog's, the
    allocator's arenas) fill in the first minutes, and a leak is what keeps growing after."""
    say(f"resident memory over {minutes:g} min (load {load()})")
    start = time.monotonic()
    points: list[tuple[float, float]] = []
    while (now := time.monotonic()) < start + minutes * 60:
        points.append((now - start, sample(pid).rss_mb))
        time.sleep(min(5.0, start + minutes * 60 - now))
    points.append((time.monotonic() - start, sample(pid).rss_mb))
    parts = rss_parts(pid)
    times, rss = [t for t, _ in points], [m for _, m in points]
    growth = slope(*second_half(times, rss)) * 3600
    ctx: dict[str, Any] = {"minutes": minutes, "samples": len(points), "load": load(),
                           "interpreter": str(python)}
    emit("daemon.rss_mb", points[-1][1], "MB", rss_max_mb=round(max(m for _, m in points), 1),
         **parts, **ctx)
    emit("daemon.rss_growth_mb_per_h", growth, "MB/h", over="second half",
         rss_first_mb=round(points[0][1], 1), rss_last_mb=round(points[-1][1], 1),
         whole_run_mb_per_h=round(slope(times, rss) * 3600, 1),
         first_window_mb_per_h=round(window_growth, 1), **ctx)


async def fill(e2e: E2E, n: int) -> None:
    """Append ``n`` pending heart-rate readings offline through the vault API, 100 per call
    (as sessions do), under the daemon's key and path."""
    from bench.vault_bench import DEVICES, readings
    from edge.config import VaultConfig
    from edge.vault import Vault

    config = VaultConfig(path=e2e.vault_path, key_provider="env", allow_env_key=True)
    key = bytes.fromhex(e2e.env["EDGE_VAULT_KEY"])
    vault = await Vault.open(config, key)
    try:
        for i in range(0, n, 1000):
            await vault.append(readings(i, min(1000, n - i)))
    finally:
        await vault.close()
    assert len(DEVICES) <= 4


def uplink_connected_at(gw: Gateway) -> float | None:
    """When (epoch seconds) the daemon's uplink first connected, from its JSON log."""
    for event in gw.log_events():
        if event.get("event") == "uplink.connected" and "timestamp" in event:
            when = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
            return when.timestamp()
    return None


def backlog_drain(workdir: Path, backlog: int, timeout: float) -> None:
    with rig(workdir, "hr:1") as e2e:
        for i in range(4):  # the patients of bench.vault_bench.readings
            e2e.grant(f"pt-{i}")
        t = time.monotonic()
        asyncio.run(fill(e2e, backlog))
        size = sum(p.stat().st_size for p in e2e.vault_path.parent.iterdir() if p.is_file())
        say(f"filled {backlog} pending readings in {time.monotonic() - t:.0f} s "
            f"({size / backlog:.0f} bytes on disk each); starting the daemon (load {load()})")
        gw = e2e.gateway()  # ready: it answers status (it may be draining already)
        pid = gw.proc.pid
        started = time.time()
        depth, done_at = backlog, started
        while time.time() - started < timeout:
            depth = int(gw.status()["queue_depth"])
            done_at = time.time()  # conservative: when the empty queue was seen
            if depth == 0:
                break
            time.sleep(0.5)
        cpu = sample(pid).cpu_s  # the whole process: start-up included
        stats = gw.status()["uplink"]["stats"] or {}
        connected = uplink_connected_at(gw)
        drained = backlog - depth
        if drained <= 0 or connected is None:
            raise RuntimeError(f"nothing drained in {timeout:g} s:\n{gw.log_text()[-3000:]}")
        # From the uplink's first connection (the daemon's log) to an empty queue seen by a
        # status call: the status round trip (a CLI process) is the resolution.
        elapsed = done_at - connected
        rate = drained / elapsed
        emit("daemon.week_backlog_drain_s", WEEK_READINGS / rate, "s",
             extrapolated=f"linearly from {drained} readings drained in {elapsed:.1f} s to "
                          f"{WEEK_READINGS} (10/s for 7 days)",
             backlog=backlog, drained=drained, measured_s=round(elapsed, 1),
             readings_per_s=round(rate, 1), cpu_ms_per_reading=round(cpu * 1000 / drained, 3),
             complete=depth == 0, forwarder_delivered=stats.get("readings_delivered"),
             messages=stats.get("messages_sent"), load=load())
        rc = gw.stop(15)
        if rc != 0:
            say(f"edge run exited with {rc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.daemon_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="10 s warm-up + 20 s window, 50,000-reading backlog")
    ap.add_argument("--warmup", type=float, help="seconds (default 40; quick 10)")
    ap.add_argument("--window", type=float, help="seconds (default 60; quick 20)")
    ap.add_argument("--backlog", type=int, help="readings (default 200,000; quick 50,000)")
    ap.add_argument("--rss-minutes", type=float,
                    help="how long resident memory is followed after the window (default 10;"
                         " quick 2)")
    ap.add_argument("--dev-venv", action="store_true",
                    help="run edge run on this interpreter instead of a hub-only environment")
    ap.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                    help="also sample the daemon with py-spy for SECONDS after the window")
    ap.add_argument("--only", choices=("steady", "drain"), help="run one part")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (10.0 if args.quick else 40.0)
    window = args.window if args.window is not None else (20.0 if args.quick else 60.0)
    backlog = args.backlog if args.backlog is not None else (
        50_000 if args.quick else 200_000)
    fsync_s = 8.0 if args.quick else 15.0
    rss_minutes = args.rss_minutes if args.rss_minutes is not None else (
        2.0 if args.quick else 10.0)
    # stdout carries only the figures (the offline fill uses the vault in this process)
    configure_logging("warning", "console", stream=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="edge-daemon-bench-", dir=DISK))
    fs = subprocess.run(["df", "--output=fstype", str(workdir)], capture_output=True,
                        text=True, check=False).stdout.split()[-1:]
    say(f"work directory {workdir} ({''.join(fs) or '?'}); load {load()}")
    if fs == ["tmpfs"]:
        say("WARNING: tmpfs: write_bytes will not count the vault's writes")
    # Ctrl-C and SIGTERM unwind through the rigs' context managers, which stop everything.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = threading.Event()
    try:
        if args.only in (None, "steady"):
            steady_state(workdir / "steady", warmup, window, fsync_s, args.profile, rss_minutes,
                         args.dev_venv)
        if args.only in (None, "drain"):
            backlog_drain(workdir / "drain", backlog, timeout=600.0)
    except KeyboardInterrupt:
        interrupted.set()
        say("interrupted; every process the benchmark started was stopped")
    finally:
        if args.keep or args.profile:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted.is_set() else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
