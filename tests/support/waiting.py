"""Bounded polling of state the test cannot be notified about (another process, a database, a socket)."""

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import anyio

T = TypeVar("T")


async def until(condition: Callable[[], T | Awaitable[T]], *, timeout: float = 20, interval: float = 0.05) -> T:
    """Return the first truthy value of ``condition()`` (sync or async), polling every ``interval`` seconds.

    Raises:
        TimeoutError: If it stays falsy for ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        while True:
            value: object = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return cast(T, value)
            await anyio.sleep(interval)
