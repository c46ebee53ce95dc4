"""[clock]: its sources, and flag_file exactly with source = "flag-file"."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.config import parse_config
from edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"


def _with_clock(clock: dict[str, Any]) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    data["clock"] = clock
    return data


def _problems(clock: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(_with_clock(clock))
    return err.value.problems


def test_the_default_is_the_system_probe_without_a_flag_file() -> None:
    cfg = parse_config(_with_clock({}))
    assert cfg.clock.source == "system"
    assert cfg.clock.flag_file is None


def test_flag_file_source_takes_an_absolute_path() -> None:
    cfg = parse_config(_with_clock({"source": "flag-file",
                                    "flag_file": "/run/chrony/synchronised"}))
    assert cfg.clock.source == "flag-file"
    assert cfg.clock.flag_file == Path("/run/chrony/synchronised")


def test_flag_file_source_without_its_file_says_what_to_set() -> None:
    [line] = _problems({"source": "flag-file"})
    assert line.startswith('clock.flag_file: required with source = "flag-file"')
    assert "flag_file = " in line and "— fix:" in line


def test_a_relative_flag_file_is_refused() -> None:
    [line] = _problems({"source": "flag-file", "flag_file": "run/synchronised"})
    assert line.startswith("clock.flag_file: must be an absolute path")


@pytest.mark.parametrize("source", ["system", "assume-synchronised"])
def test_a_flag_file_with_another_source_is_refused(source: str) -> None:
    [line] = _problems({"source": source, "flag_file": "/run/x"})
    assert line.startswith(f'clock.flag_file: only used with source = "flag-file" '
                           f'(source is "{source}")')
    assert "remove flag_file" in line


def test_an_unknown_source_lists_the_allowed_ones() -> None:
    [line] = _problems({"source": "chrony"})
    assert line.startswith("clock.source:")
    assert "'flag-file'" in line
