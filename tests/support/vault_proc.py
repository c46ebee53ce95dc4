"""Vault work in a child process that the tests kill (``python -m tests.support.vault_proc``).

Modes (the vault config comes from ``--dir``, laid out by ``vault_config``):

``die-after-append N``   append N readings, then SIGKILL itself (leaves -wal and -shm behind)
``writer START``         append batches forever; after each append RETURNS print
                         ``A <id> <id> ...``; every few batches deliver some and print
                         ``D <id> ...`` after mark_delivered returns
``rotate-die STAGE``     run a key rotation, printing each step's name as it is reached, and
                         SIGKILL itself at STAGE (``never``: the parent kills it)
``open-close N``         N times: open, append a batch, close — every close is a last close
                         that checkpoints and removes the WAL; prints ``ready`` after the first
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from edge.log import configure_logging
from edge.vault import Vault
from edge.vault.keys import key_provider
from edge.vault.rotation import rotate_key
from tests.support.vault_support import hr, vault_config

REPO = Path(__file__).resolve().parents[2]


def spawn(tmp: Path, *args: str, stdout: int | None = None,
          flush_interval_s: float | None = None) -> subprocess.Popen[str]:
    """Start this module in a child process with the repository on its path; ``stdout`` as
    for :class:`subprocess.Popen` (``PIPE``, ``DEVNULL``, or None to inherit);
    ``flush_interval_s`` overrides the vault config's."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    extra = [] if flush_interval_s is None else ["--flush-interval", str(flush_interval_s)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.vault_proc", "--dir", str(tmp), *extra, *args],
        cwd=REPO, env=env, text=True, stdout=stdout,
    )


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


async def _main(ns: argparse.Namespace) -> None:
    configure_logging("warning", "console", stream=sys.stderr)
    overrides = {} if ns.flush_interval is None else {"flush_interval_s": ns.flush_interval}
    cfg = vault_config(Path(ns.dir), **overrides)
    if ns.mode == "rotate-die":
        stage = ns.arg

        def hook(name: str) -> None:
            print(name, flush=True)
            if name == stage:
                _die()

        await rotate_key(cfg, actor="admin:test", hook=hook)
        return
    key = key_provider(cfg).load()
    if ns.mode == "open-close":
        for n in range(int(ns.arg)):
            async with await Vault.open(cfg, key) as v:
                await v.append([hr(n * 50 + k) for k in range(50)])
            if n == 0:
                print("ready", flush=True)
        return
    vault = await Vault.open(cfg, key)
    if ns.mode == "die-after-append":
        await vault.append([hr(i) for i in range(int(ns.arg))])
        _die()
    start = int(ns.arg)
    rng = random.Random(start)
    i = start
    appended: list[str] = []
    while True:
        batch = [hr(i + k) for k in range(rng.randint(1, 40))]
        i += len(batch)
        await vault.append(batch)
        print("A", *(r.id for r in batch), flush=True)
        appended += [r.id for r in batch]
        if rng.random() < 0.3 and appended:
            chosen = appended[: rng.randint(1, len(appended))]
            await vault.mark_delivered(chosen)
            print("D", *chosen, flush=True)
            appended = appended[len(chosen):]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--flush-interval", type=float, default=None)
    p.add_argument("mode", choices=["die-after-append", "writer", "rotate-die", "open-close"])
    p.add_argument("arg")
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
