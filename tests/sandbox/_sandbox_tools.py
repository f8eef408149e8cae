"""Module-level functions the sandbox tests send to the worker by module path."""

from __future__ import annotations

from agentrt.tools import tool


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def allocate(mib: int) -> int:
    block = bytearray(mib * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])
    return len(block)


async def async_double(x: int) -> int:
    return 2 * x


@tool(runs_in="sandbox")
def typed_square(x: int) -> int:
    """Square a number.

    Args:
        x: the number.
    """
    return x * x
