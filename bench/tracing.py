"""Tools the daemon benchmark points at the running daemon: ``strace -c`` for its fsync count
and py-spy for a profile summarised as own and inclusive shares."""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def say(text: str) -> None:
    print(f"# daemon: {text}", file=sys.stderr, flush=True)



def count_fsyncs(pid: int, seconds: float) -> tuple[int, str] | None:
    """fsync + fdatasync calls of ``pid`` (all threads) over ``seconds``, with strace -c;
    None when strace is not installed or cannot attach."""
    strace = shutil.which("strace")
    if strace is None:
        say("strace is not installed (apt-get install strace): no fsync count")
        return None
    proc = subprocess.Popen([strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-p", str(pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if "attach" in err and "Operation not permitted" in err:
        say(f"strace could not attach: {err.strip()[:200]}")
        return None
    calls = 0
    for line in err.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync") and len(parts) >= 5:
            calls += int(parts[3])
    return calls, err


def profile(pid: int, seconds: int, out: Path) -> None:
    """Sample ``pid`` with py-spy for ``seconds`` (raw collapsed stacks into ``out``) and print
    the top functions by own and by total samples to stderr."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        say("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return
    done = subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(seconds),
                           "--format", "raw", "--rate", "250", "--nonblocking", "-o", str(out)],
                          capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0 or not out.exists():
        say(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-300:]}")
        return
    for line in summarize(out.read_text(), top=30):
        print(f"# profile: {line}", file=sys.stderr)
    say(f"raw py-spy stacks: {out}")


def summarize(raw: str, top: int = 30) -> list[str]:
    """Top functions of py-spy's raw (collapsed) output: own samples and total samples (a
    function counted once per stack), as shares of all samples of non-idle threads."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        # idle: the event loop waiting in select/epoll, executor threads waiting for work
        # (the vault's writer waits in ``_Writer._serve`` itself: a C-level queue get)
        leaf = frames[-1]
        if any(w in leaf for w in ("select (", "poll (", "wait (", "_worker (", "sleep (",
                                   "_Writer._serve (")):
            continue
        n += c
        own[leaf] += c
        for f in set(frames):
            total[f] += c
    if n == 0:
        return ["no busy samples"]
    out = [f"{n} busy samples; top by own samples:"]
    out += [f"  {100 * c / n:5.1f}%  {f}" for f, c in own.most_common(top)]
    out.append("top by total samples (inclusive):")
    out += [f"  {100 * c / n:5.1f}%  {f}" for f, c in total.most_common(top)]
    return out
