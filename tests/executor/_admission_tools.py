"""Stdlib-only tool functions for the admission tests (loaded by file in the sandbox worker)."""

from __future__ import annotations

import time

__agentrt_standalone__ = True


def hold(first_mib: int, pause: float, second_mib: int = 0, then: float = 0.0) -> int:
    """Touch ``first_mib`` MiB, sleep ``pause`` s, touch ``second_mib`` MiB more, sleep ``then`` s."""
    a = bytearray(first_mib * 2**20)
    time.sleep(pause)
    b = bytearray(second_mib * 2**20)
    time.sleep(then)
    return len(a) + len(b)
