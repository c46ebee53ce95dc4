"""config/gateway.example.toml documents every key of edge.config with its default, and is valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from edge.config import GatewayConfig, parse_config
from edge.config_env import check_environment

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"

# `key = ...` or a commented-out `# key = ...`
_ASSIGN = re.compile(r"^#?\s*([a-z_][a-z0-9_]*)\s*=", re.M)


def _sections() -> dict[str, str]:
    """Section name -> its text (comments included)."""
    text = EXAMPLE.read_text()
    parts = re.split(r"(?m)^\[([a-z0-9_]+)\]\s*$", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _section_models() -> dict[str, type[BaseModel]]:
    models = {}
    for name, field in GatewayConfig.model_fields.items():
        assert isinstance(field.annotation, type)
        assert issubclass(field.annotation, BaseModel)
        models[name] = field.annotation
    return models


def _parsed() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_parses_and_validates() -> None:
    cfg = parse_config(_parsed())
    assert cfg.hub.id
    assert cfg.uplink.pins


def test_example_is_valid_except_for_paths() -> None:
    problems = check_environment(parse_config(_parsed()))
    assert problems, "the example's certificate paths should not exist on a test machine"
    assert all("does not exist" in p for p in problems), problems


def test_every_section_and_key_is_documented() -> None:
    sections = _sections()
    models = _section_models()
    assert set(sections) == set(models)
    for section, model in models.items():
        documented = set(_ASSIGN.findall(sections[section]))
        missing = set(model.model_fields) - documented
        assert not missing, f"[{section}] lacks {sorted(missing)}"
        stale = documented - set(model.model_fields)
        assert not stale, f"[{section}] documents unknown keys {sorted(stale)}"


def test_every_key_has_a_comment_above_it() -> None:
    for section, text in _sections().items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^([a-z_]+)\s*=", line)
            if m is None:
                continue
            above = lines[i - 1].strip() if i else ""
            # a key without its own comment sits right under a sibling that shares one
            assert above.startswith("#") or re.match(r"^[a-z_]+\s*=", above), (
                f"[{section}] {m.group(1)} has no comment"
            )


def test_example_shows_the_defaults() -> None:
    """A key set in the example holds its default, unless it has none (required or None)."""
    data = _parsed()
    cfg = parse_config(data)
    for section, model in _section_models().items():
        for name, field in model.model_fields.items():
            default = field.default
            if default is PydanticUndefined or default is None:
                continue
            assert name in data[section], f"{section}.{name} (default {default!r}) not set"
            assert getattr(getattr(cfg, section), name) == default, f"{section}.{name}"


def test_commented_out_keys_are_the_ones_without_a_default() -> None:
    data = _parsed()
    for section, model in _section_models().items():
        for name, field in model.model_fields.items():
            if name not in data[section]:
                assert field.default is None, f"{section}.{name} is only commented out"
