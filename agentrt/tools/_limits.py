"""`Limits`: the resource intent a tool declares for each of its calls."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["Limits", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KI": 1024, "KIB": 1024,
          "M": 1024**2, "MB": 1024**2, "MI": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GI": 1024**3, "GIB": 1024**3,
          "T": 1024**4, "TB": 1024**4, "TI": 1024**4, "TIB": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """Parse a size: an int (bytes) or a string like ``"512M"``, ``"1.5G"``, ``"64KiB"``.

    Units are binary (K = 1024 bytes), as cgroup's ``memory.max`` and docker's ``mem_limit``.

    Raises:
        ValueError: the string is not a number followed by a known unit.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512M'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return int(value)
    m = _SIZE.match(value)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot parse size {value!r}: use bytes or a number with K, M, G or T")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


Bytes = Annotated[int, BeforeValidator(parse_bytes)]


class Limits(BaseModel):
    """Resource intent of one tool call; every field has a default and a unit.

    Attributes:
        memory: memory intent in bytes (accepts "512M"); the soft limit (``memory.high``).
        memory_burst: ratio over ``memory`` allowed before the hard limit (``memory.max`` =
            ``memory * memory_burst``).
        cpu: CPU cores (fractional), enforced as a CFS quota.
        pids: maximum number of processes and threads (``pids.max``).
        timeout: wall-clock seconds before the call is killed.
        network: ``"none"``, ``"loopback"``, or an allow-list of ``"host:port"`` strings.
        disk: bytes the call may write to its work directory; ``None`` for no limit.
        read_only_paths: host paths visible read-only inside the sandbox.
        writable_paths: host paths visible read-write inside the sandbox.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory: Bytes = Field(512 * 1024**2, gt=0)
    memory_burst: float = Field(1.5, ge=1.0)
    cpu: float = Field(1.0, gt=0)
    pids: int = Field(64, ge=1)
    timeout: float = Field(60.0, gt=0)
    network: Literal["none", "loopback"] | tuple[str, ...] = "none"
    disk: Bytes | None = None
    read_only_paths: tuple[str, ...] = ()
    writable_paths: tuple[str, ...] = ()

    @property
    def memory_max(self) -> int:
        """Hard memory limit in bytes: ``memory * memory_burst``."""
        return int(self.memory * self.memory_burst)
