"""``python -m soak [--minutes 30] [--seed 1] [--hr 35] [--glucose 15] ...``

Exit status: 0 when nothing was lost, the daemon survived and exited cleanly and its open file
descriptors stayed within the bound; 1 otherwise; 2 for bad arguments; 130 on Ctrl-C (every
process is stopped in each case).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from bench.product_venv import hub_python
from soak.run import SoakConfig, run_soak, summary
from soak.schedule import Rates


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse(argv: list[str] | None) -> SoakConfig:
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=_positive, default=30.0,
                    help="how long faults are injected (default 30)")
    ap.add_argument("--seed", type=int, default=1, help="the fault schedule's seed")
    ap.add_argument("--hr", type=int, default=35, help="heart-rate straps (default 35)")
    ap.add_argument("--glucose", type=int, default=15, help="glucose meters (default 15)")
    ap.add_argument("--sample-every", type=_positive, default=30.0, metavar="S",
                    help="seconds between RSS / fd samples (default 30)")
    ap.add_argument("--link-drop-every", type=_positive, default=20.0, metavar="S",
                    help="mean seconds between link drops (default 20)")
    ap.add_argument("--broker-restart-every", type=_positive, default=300.0, metavar="S",
                    help="mean seconds between broker restarts (default 300)")
    ap.add_argument("--malformed-every", type=_positive, default=60.0, metavar="S",
                    help="mean seconds between malformed-notification windows (default 60)")
    ap.add_argument("--fd-growth", type=int, default=32, metavar="N",
                    help="fail if open fds grow by more than N (default 32)")
    ap.add_argument("--drain-timeout", type=_positive, default=300.0, metavar="S",
                    help="how long the queue may take to drain at the end (default 300)")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a new "
                    "directory under /var/tmp, removed after a pass)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory after a pass")
    ap.add_argument("--dev-venv", action="store_true",
                    help="run edge run on this interpreter, not on a hub-only virtual "
                         "environment (its resident memory then includes development packages)")
    args = ap.parse_args(argv)
    if args.hr < 0 or args.glucose < 0 or args.hr + args.glucose == 0:
        ap.error("--hr and --glucose must be >= 0 and name at least one device")
    rates = Rates(link_drop_every_s=args.link_drop_every,
                  broker_restart_every_s=args.broker_restart_every,
                  malformed_every_s=args.malformed_every)
    return SoakConfig(minutes=args.minutes, seed=args.seed, hr=args.hr, glucose=args.glucose,
                      sample_every_s=args.sample_every, rates=rates, workdir=args.workdir,
                      keep=args.keep, fd_growth_limit=args.fd_growth,
                      drain_timeout_s=args.drain_timeout,
                      python=None if args.dev_venv else str(hub_python()))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    # SIGTERM (a CI runner's timeout) cleans up as Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_soak(cfg)
    except KeyboardInterrupt:
        print("soak interrupted: every process stopped", file=sys.stderr)
        return 130
    print(summary(result, cfg), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
