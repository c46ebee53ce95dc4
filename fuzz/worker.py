"""One fuzz target under atheris: ``python -m fuzz.worker TARGET [libFuzzer args…]``.

The runner (:mod:`fuzz.run`) starts one worker per target. The code under test is imported
inside ``atheris.instrument_imports`` so that libFuzzer sees its coverage; libFuzzer then owns
the process (``atheris.Fuzz`` does not return) and prints its statistics on stderr.
"""

from __future__ import annotations

import sys

import atheris

from fuzz.targets import TARGETS


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.worker {{{','.join(TARGETS)}}} [libFuzzer args]")
    target = TARGETS[argv[1]]
    with atheris.instrument_imports(include=list(target.instrument)):
        run = target.load()
    # Handlers log at INFO on every accepted request: keep the fuzzer's output readable.
    from edge.log import configure_logging

    configure_logging(level="critical", stream=sys.stderr)
    atheris.Setup([argv[0], *argv[2:]], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
