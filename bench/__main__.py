"""``python -m bench [NAME ...]``: discover ``bench/*_bench.py`` and run each module's
``main()`` in its own process (isolated memory, event loop and logging), in name order."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIX = "_bench.py"

# Each module runs as ``main([])`` when main takes an argv, else ``main()``.
RUNNER = """
import importlib, inspect, sys
module = importlib.import_module(sys.argv[1])
main = module.main
rc = main([]) if inspect.signature(main).parameters else main()
sys.exit(rc if isinstance(rc, int) else 0)
"""


def discover() -> dict[str, str]:
    """``{short name: module}`` for every ``*_bench.py`` beside this file."""
    return {
        p.name.removesuffix(SUFFIX): f"bench.{p.stem}"
        for p in sorted(HERE.glob("*" + SUFFIX))
    }


def machine_speed() -> None:
    """One reference figure first: a plain Python loop, so that figures measured on different
    machines can be compared (a shared virtual machine may be several times slower than
    another; every absolute figure scales with it, ratios much less)."""
    best = min(timeit.repeat("for i in range(1_000_000): s += i", "s = 0", number=1, repeat=5))
    print(json.dumps({"figure": "machine.python_loop_1m_ms", "value": round(best * 1000, 1),
                      "unit": "ms", "note": "reference only: lower is a faster machine"}),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    found = discover()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default: all of {', '.join(found) or 'none'})")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in found]
    if unknown:
        print(f"bench: no such benchmark: {', '.join(unknown)} "
              f"(have: {', '.join(found)})", file=sys.stderr)
        return 2
    machine_speed()
    failed = []
    for name in args.names or list(found):
        print(f"# bench {name}", file=sys.stderr, flush=True)
        rc = subprocess.run(
            [sys.executable, "-c", RUNNER, found[name]], cwd=HERE.parent, check=False
        ).returncode
        if rc != 0:
            failed.append(name)
            print(f"# bench {name} failed (exit {rc})", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
