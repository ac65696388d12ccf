"""The content hash of a token dataset: what identifies the data a run trained on.

``content_hash`` is the sha256 of one line per split (``train``, then ``val``) holding the
split's name, the token dtype, its size in bytes and the sha256 of its bytes. The same tokens
give the same hash wherever they live (a prepared folder, a nanoGPT folder, text tokenised in
memory); any change to either split, or to where the split falls, changes it.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

HASH_VERSION = "ra-data-hash-1"
SIDECAR = ".ra_hash.json"
_BLOCK = 8 << 20


def combine(parts: dict[str, tuple[str, int, str]]) -> str:
    """``parts``: split -> (dtype name, size in bytes, sha256 hex of the bytes)."""
    h = hashlib.sha256(f"{HASH_VERSION}\n".encode())
    for split in ("train", "val"):
        dtype, nbytes, digest = parts[split]
        h.update(f"{split} {dtype} {int(nbytes)} {digest}\n".encode())
    return h.hexdigest()


def array_part(arr: np.ndarray) -> tuple[str, int, str]:
    """(dtype, bytes, sha256) of a 1-D token array (memmaps are read in blocks)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    flat = arr.reshape(-1)
    step = max(1, _BLOCK // max(1, arr.itemsize))
    for start in range(0, flat.shape[0], step):
        h.update(memoryview(np.ascontiguousarray(flat[start : start + step])).cast("B"))
    return (arr.dtype.name, int(arr.nbytes), h.hexdigest())


def arrays_hash(train: np.ndarray, val: np.ndarray) -> str:
    return combine({"train": array_part(train), "val": array_part(val)})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def files_hash(folder: Path, dtype: str = "uint16") -> str:
    """The content hash of ``folder/train.bin`` and ``folder/val.bin`` read as ``dtype``.

    Hashing reads every byte (about 1 GB/s), so the per-file digests are cached in a sidecar
    file ``.ra_hash.json`` in the folder, keyed by each file's size and modification time; a
    changed file is hashed again. A folder that cannot be written to is hashed every time.
    """
    sidecar = folder / SIDECAR
    try:
        cache = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    parts: dict[str, tuple[str, int, str]] = {}
    changed = False
    for split in ("train", "val"):
        file = folder / f"{split}.bin"
        st = file.stat()
        key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        entry = cache.get(file.name)
        if (
            isinstance(entry, dict)
            and all(entry.get(k) == v for k, v in key.items())
            and isinstance(entry.get("sha256"), str)
        ):
            digest = entry["sha256"]
        else:
            digest = file_sha256(file)
            cache[file.name] = {**key, "sha256": digest}
            changed = True
        parts[split] = (dtype, st.st_size, digest)
    if changed:
        tmp = sidecar.with_name(f"{SIDECAR}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, sidecar)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return combine(parts)
