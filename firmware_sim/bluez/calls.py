"""Who is calling, and what: the caller of the method being served, and call recording for
the bleak canary test."""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass
from typing import Any

from dbus_fast import Variant

#: Unique bus name of the client whose method call is being served (set by the message filter
#: before dbus-fast dispatches; tasks created for coroutine methods inherit it).
SENDER: contextvars.ContextVar[str] = contextvars.ContextVar("fake_bluez_sender", default="")


@dataclass(frozen=True)
class RecordedCall:
    """A method call the fake received. ``options`` summarises dict arguments (``a{sv}``):
    ``key=value`` for plain values, ``key`` alone for the rest."""

    sender: str
    interface: str
    member: str
    path: str
    signature: str
    options: tuple[str, ...] = ()

    @property
    def shape(self) -> str:
        """``Interface.Member(signature){options} path`` with the device address and the
        attribute handles replaced by placeholders."""
        path = re.sub(r"dev_[0-9A-F_]{17}", "dev_X", self.path)
        path = re.sub(r"(service|char|desc)[0-9a-f]{4}", r"\1N", path)
        opts = "{" + ",".join(self.options) + "}" if self.options else ""
        return f"{self.interface}.{self.member}({self.signature}){opts} {path}"


def summarise_options(body: list[Any]) -> tuple[str, ...]:
    """The ``options`` of a :class:`RecordedCall` for a call with ``body``."""
    out: list[str] = []
    for arg in body:
        value = arg.value if isinstance(arg, Variant) else arg
        if isinstance(value, dict):
            for key in sorted(value):
                item = value[key].value if isinstance(value[key], Variant) else value[key]
                out.append(f"{key}={item}" if isinstance(item, str | bool | int) else str(key))
        elif isinstance(value, str | bool | int):
            # e.g. Properties.Set's interface, name and value; RemoveDevice's path
            out.append(re.sub(r"dev_[0-9A-F_]{17}", "dev_X", str(value)))
    return tuple(out)
