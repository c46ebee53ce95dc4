"""Coverage-guided fuzzing of everything that parses what another party sends.

``python -m fuzz`` (``make fuzz``) runs every target in :mod:`fuzz.targets` under atheris
(libFuzzer for Python) for a bounded time, prints executions and crashes per target and in
total, saves crashing inputs under ``build/fuzz/crashes/<target>/`` and exits non-zero on a
crash. The seed corpus is kept in the repository, one directory per target under
``fuzz/corpus/``; what a run discovers goes to ``build/fuzz/corpus/<target>/`` (not committed).

A target is a plain function ``run(data: bytes) -> None`` that does not need atheris: it calls
the code under test and lets through only the exceptions that code documents (for a GATT
decoder, :class:`edge.errors.MalformedPayload`; for the envelope, ``EnvelopeError`` …). Any
other exception, or a failed oracle (``AssertionError``: a round trip that does not hold, a
state machine that does not finish), is a crash. ``tests/unit/test_fuzz_targets.py`` runs every
target over its seed corpus without atheris.

``fuzz/findings/<target>/`` holds the crashing inputs of open findings, not run by default
(``python -m fuzz --reproduce TARGET fuzz/findings/TARGET/*``); once the code is fixed, move
them into ``fuzz/corpus/<target>/`` so that the fix stays proven.
"""
