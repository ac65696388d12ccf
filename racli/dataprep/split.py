"""Which documents go to the validation split: whole documents, chosen from a seed.

Stratified sampling over the document order: with ``L = 1 / val_fraction``, stratum ``k``
covers document positions ``[k L, (k + 1) L)`` and one position in it, drawn from the seed,
is a validation document. So the validation split holds about ``val_fraction`` of the
documents, spread evenly across the corpus, and which ones depends only on (seed, position):
not on the number of workers, nor on where ``--max-tokens`` stops. No torch here.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform(seed: int, index: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) for each integer in ``index``, fixed by (seed, salt, index)
    (the splitmix64 finaliser of a counter)."""
    with np.errstate(over="ignore"):
        x = np.asarray(index, dtype=np.int64).astype(np.uint64)
        x = x + np.uint64(
            (int(seed) * 0x9E3779B97F4A7C15 + int(salt) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019)
            & 0xFFFFFFFFFFFFFFFF
        )
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def val_mask(doc_ids: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """True where the document at that position belongs to the validation split."""
    ids = np.asarray(doc_ids, dtype=np.int64)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    length = 1.0 / float(val_fraction)
    k0 = np.floor(ids / length).astype(np.int64)
    mask = np.zeros(ids.shape, dtype=bool)
    for dk in (-1, 0, 1):
        k = k0 + dk
        ok = k >= 0
        kk = np.where(ok, k, 0)
        pick = np.floor((kk + uniform(seed, kk)) * length).astype(np.int64)
        mask |= ok & (pick == ids)
    return mask
