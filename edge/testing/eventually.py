"""The one bounded wait for tests that watch real processes, sockets or threads."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: real seconds between two looks at the condition
_STEP_S = 0.02


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within_s: float = 10.0,
    what: str = "condition",
) -> None:
    """Return once ``condition()`` is true; ``AssertionError`` naming ``what`` after
    ``within_s`` real seconds. The condition may be a plain or an async function."""
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within_s:g} s")
        await asyncio.sleep(_STEP_S)
