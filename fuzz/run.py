"""``python -m fuzz`` (``make fuzz``): run every fuzz target for a bounded time.

Each target runs in its own process (:mod:`fuzz.worker`, atheris/libFuzzer) with the committed
seed corpus ``fuzz/corpus/<target>/`` and a working corpus ``build/fuzz/corpus/<target>/``
(what the run discovers; kept between runs, never committed). The time budget
(``--total-seconds``, default ``$FUZZ_SECONDS`` or 300) is shared among the targets by weight
and run ``--jobs`` at a time (default 2). The runner prints executions and crashes per target
and in total, and exits 1 when any target crashed (or did not run). A crashing input is saved
as ``build/fuzz/crashes/<target>/crash-<sha1>``; reproduce it without atheris with
``python -m fuzz --reproduce TARGET FILE``. ``--merge`` adds the inputs of the working corpus
that reach new coverage to the committed seed corpus.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fuzz.targets import TARGETS, Target

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "corpus"
BUILD = ROOT / "build" / "fuzz"
DEFAULT_TOTAL_S = 300
#: seconds a worker spends importing and reading its corpus before it fuzzes
STARTUP_S = 2.0
#: a single input that runs longer than this is a hang (a crash)
INPUT_TIMEOUT_S = 10
RSS_LIMIT_MB = 1024

_EXECS_RE = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE_RE = re.compile(r"Done (\d+) runs in")
_PULSE_RE = re.compile(r"^#(\d+)\s", re.MULTILINE)
_CORPUS_RE = re.compile(r"corp: (\d+)/")


@dataclass
class Outcome:
    target: Target
    seconds: float
    executions: int
    crashes: list[Path]
    returncode: int
    corpus: int
    log: Path

    @property
    def failed(self) -> bool:
        return bool(self.crashes) or self.returncode != 0

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0


def plan(targets: list[Target], total_s: float, jobs: int,
         per_target_s: float | None) -> dict[str, int]:
    """Fuzzing seconds per target: ``per_target_s`` each, or ``total_s`` of wall time on
    ``jobs`` processes shared by weight (at least 1 s each)."""
    if per_target_s is not None:
        return {t.name: max(1, round(per_target_s)) for t in targets}
    weights = sum(t.weight for t in targets)
    budget = total_s * jobs
    return {t.name: max(1, round(budget * t.weight / weights - STARTUP_S)) for t in targets}


def _worker(target: Target, *args: str) -> list[str]:
    return [sys.executable, "-m", "fuzz.worker", target.name, *args]


def fuzz_one(target: Target, seconds: int) -> Outcome:
    work = BUILD / "corpus" / target.name
    crashes = BUILD / "crashes" / target.name
    logs = BUILD / "logs"
    for d in (work, crashes, logs):
        d.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS / target.name
    before = set(crashes.iterdir())
    log = logs / f"{target.name}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(
            _worker(target, str(work), *([str(seeds)] if seeds.is_dir() else []),
                    f"-max_total_time={seconds}", f"-max_len={target.max_len}",
                    f"-timeout={INPUT_TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
                    f"-artifact_prefix={crashes}/", "-print_final_stats=1"),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False,
            timeout=seconds + 120,
        )
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    return Outcome(
        target=target,
        seconds=elapsed,
        executions=_executions(text),
        crashes=sorted(set(crashes.iterdir()) - before),
        returncode=proc.returncode,
        corpus=_last_int(_CORPUS_RE, text),
        log=log,
    )


def _last_int(pattern: re.Pattern[str], text: str) -> int:
    found = pattern.findall(text)
    return int(found[-1]) if found else 0


def _executions(text: str) -> int:
    for pattern in (_EXECS_RE, _DONE_RE, _PULSE_RE):
        n = _last_int(pattern, text)
        if n:
            return n
    return 0


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _row(o: Outcome) -> str:
    verdict = "CRASH" if o.crashes else ("ERROR" if o.returncode else "ok")
    return (f"{o.target.name:<26} {o.seconds:7.1f} s {o.executions:>11,} execs "
            f"{o.rate:>9,.0f}/s  corpus {o.corpus:>5}  crashes {len(o.crashes)}  {verdict}")


def run(targets: list[Target], seconds: dict[str, int], jobs: int) -> int:
    print(f"fuzzing {len(targets)} targets, {jobs} at a time "
          f"(~{sum(seconds.values()) / jobs + STARTUP_S * len(targets) / jobs:.0f} s); "
          f"logs and crashes under {BUILD.relative_to(ROOT)}/", flush=True)
    outcomes: dict[str, Outcome] = {}
    order = sorted(targets, key=lambda t: -seconds[t.name])  # longest first: even finish
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fuzz_one, t, seconds[t.name]): t for t in order}
        for future in as_completed(futures):
            o = future.result()
            outcomes[o.target.name] = o
            print(_row(o), flush=True)
            if o.failed:
                for crash in o.crashes:
                    print(f"  crashing input: {crash.relative_to(ROOT)}")
                print(f"  --- {o.log.relative_to(ROOT)} (tail) ---\n{_tail(o.log)}\n  ---",
                      flush=True)
    done = [outcomes[t.name] for t in targets]
    total = sum(o.executions for o in done)
    crashes = sum(len(o.crashes) for o in done)
    errors = sum(1 for o in done if o.returncode and not o.crashes)
    print("\nsummary")
    for o in done:
        print("  " + _row(o))
    print(f"TOTAL {total:,} executions over {len(done)} targets; {crashes} crash(es)"
          + (f"; {errors} target(s) failed to run" if errors else ""))
    return 1 if crashes or errors else 0


def reproduce(target: Target, files: list[Path]) -> int:
    """Run ``files`` through ``target`` without atheris; 1 if any raises."""
    fn = target.load()
    status = 0
    for f in files:
        try:
            fn(f.read_bytes())
        except Exception:
            status = 1
            print(f"{f}: CRASH")
            traceback.print_exc()
        else:
            print(f"{f}: ok")
    return status


def merge(targets: list[Target]) -> int:
    """Add the working corpus' inputs that reach new coverage to the seed corpus."""
    status = 0
    for t in targets:
        seeds, work = SEEDS / t.name, BUILD / "corpus" / t.name
        if not work.is_dir():
            continue
        seeds.mkdir(parents=True, exist_ok=True)
        before = len(list(seeds.iterdir()))
        proc = subprocess.run(_worker(t, "-merge=1", f"-max_len={t.max_len}", str(seeds),
                                      str(work)), cwd=ROOT, capture_output=True, check=False)
        status |= proc.returncode
        print(f"{t.name}: {before} -> {len(list(seeds.iterdir()))} seed inputs")
    return 1 if status else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--total-seconds", type=float,
                   default=float(os.environ.get("FUZZ_SECONDS", DEFAULT_TOTAL_S)),
                   help="wall-clock budget of the whole run (default $FUZZ_SECONDS or "
                        f"{DEFAULT_TOTAL_S})")
    p.add_argument("--seconds", type=float, default=None,
                   help="fuzz each target this long instead (ignores --total-seconds)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="targets fuzzed at once (default: 2, or 1 on one CPU)")
    p.add_argument("--targets", default="", help="comma-separated names (default: all)")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("--reproduce", nargs="+", metavar=("TARGET", "FILE"),
                   help="run inputs through one target without atheris")
    p.add_argument("--merge", action="store_true",
                   help="merge the working corpus into the committed seed corpus")
    args = p.parse_args(argv)
    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:<26} {t.doc}")
        return 0
    if args.reproduce:
        name, *files = args.reproduce
        if name not in TARGETS or not files:
            p.error("--reproduce TARGET FILE [FILE …]")
        return reproduce(TARGETS[name], [Path(f) for f in files])
    names = [n for n in args.targets.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}; see --list")
    targets = [TARGETS[n] for n in names]
    if args.merge:
        return merge(targets)
    jobs = max(1, args.jobs)
    return run(targets, plan(targets, args.total_seconds, jobs, args.seconds), jobs)
