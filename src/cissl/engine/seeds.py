"""Every random stream of a run gets its own seed, derived from the run seed and the stream's name."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, stream: str) -> int:
    """A separate 63-bit seed per named random stream of a run."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
