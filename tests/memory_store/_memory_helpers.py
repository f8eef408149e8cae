"""Helpers shared by the memory store tests."""

import numpy as np


def unit(rng: np.random.Generator, n: int, d: int = 384) -> np.ndarray:
    """``(n, d)`` random unit vectors (float32)."""
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
