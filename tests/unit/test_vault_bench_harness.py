"""`python -m bench`: benchmarks are discovered by file name; unknown names are refused."""

from __future__ import annotations

import pytest

from bench.__main__ import discover, main


def test_every_bench_module_is_discovered() -> None:
    found = discover()
    assert found["vault"] == "bench.vault_bench"
    assert all(module == f"bench.{name}_bench" for name, module in found.items())


def test_an_unknown_benchmark_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-bench"]) == 2
    assert "no such benchmark: no-such-bench" in capsys.readouterr().err
