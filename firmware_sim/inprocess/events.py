"""Event plumbing: peripheral events forwarded to callables, and user callbacks run as bleak
runs them (coroutine functions as tasks of their own)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def plain_callback(callback: Callable[..., Any], *first: Any) -> Callable[..., None]:
    """``callback`` with ``first`` bound as its leading arguments; as in bleak, a coroutine
    function is run as a task of its own rather than awaited by the caller."""
    if inspect.iscoroutinefunction(callback):

        def spawned(*args: Any) -> None:
            _spawn(callback(*first, *args))

        return spawned
    return functools.partial(callback, *first)


class Observer:
    """A PeripheralEvents sink that forwards to callables (scheduled, never re-entrant)."""

    def __init__(
        self,
        *,
        notify: Callable[[int, bytes], None] | None = None,
        disconnected: Callable[[str], None] | None = None,
        advertisement: Callable[[], None] | None = None,
    ) -> None:
        self._notify = notify
        self._disconnected = disconnected
        self._advertisement = advertisement

    def notify(self, handle: int, value: bytes) -> None:
        if self._notify is not None:
            asyncio.get_running_loop().call_soon(self._notify, handle, bytes(value))

    def disconnected(self, reason: str) -> None:
        if self._disconnected is not None:
            asyncio.get_running_loop().call_soon(self._disconnected, reason)

    def advertisement_changed(self) -> None:
        if self._advertisement is not None:
            asyncio.get_running_loop().call_soon(self._advertisement)
