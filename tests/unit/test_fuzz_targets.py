"""Every fuzz target runs its committed seed corpus (and a few hundred arbitrary inputs)
without a crash, without atheris: what ``make fuzz`` starts from is sound, and a crash the
fuzzer found and someone fixed stays fixed once its input is in the corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fuzz.run import plan
from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


def _arbitrary(name: str, n: int) -> list[bytes]:
    """Deterministic pseudo-random inputs of growing length."""
    out = []
    for i in range(n):
        seed = hashlib.sha256(f"{name}/{i}".encode()).digest()
        out.append((seed * (1 + i // 16))[: i % 97])
    return out


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_seed_corpus_runs_without_a_crash(name: str) -> None:
    seeds = sorted(p for p in (CORPUS / name).iterdir() if p.is_file())
    assert seeds, f"fuzz/corpus/{name}/ is empty"
    run = TARGETS[name].load()
    for seed in seeds:
        run(seed.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_arbitrary_bytes_run_without_a_crash(name: str) -> None:
    run = TARGETS[name].load()
    for data in _arbitrary(name, 300):
        run(data)


def test_the_time_budget_is_shared_by_weight() -> None:
    targets = list(TARGETS.values())
    seconds = plan(targets, total_s=300, jobs=2, per_target_s=None)
    assert set(seconds) == set(TARGETS)
    assert all(s >= 1 for s in seconds.values())
    assert sum(seconds.values()) <= 600
    assert seconds["racp_client"] > seconds["battery_level"]
    assert plan(targets, 300, 2, per_target_s=3) == dict.fromkeys(TARGETS, 3)
