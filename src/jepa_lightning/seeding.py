"""Seeds derived from a few integers, so random draws are pure functions of where they happen.

Deriving a fresh seed for every (epoch, sample) and every (rank, epoch, batch) — instead of
advancing one long-lived generator — is what makes training resume exactly after a crash, also
mid-epoch and under DDP: nothing that would have to be checkpointed is consumed, and no callback
or extra process can shift the stream.
"""

from __future__ import annotations

import os

import numpy as np

#: Domain tags so that e.g. the data seed and the mask seed never coincide for equal inputs.
#: ``DIRECTIONS``: the random directions of the SIGReg / VISReg regularisers.
DATA_ORDER, DATA_SAMPLE, MASKS, DIRECTIONS = 1, 2, 3, 4

_U64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed that is a well-mixed, platform-independent function of ``values``
    (NumPy's ``SeedSequence``; negative values are taken modulo 2**64)."""
    state = np.random.SeedSequence([int(v) & _U64 for v in values]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def global_seed(default: int = 0) -> int:
    """The seed of ``seed_everything`` in this process (inherited by DDP workers it launches),
    or ``default`` when none was set."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else default
