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
    parts: dict[str, tuple[str, int, str]] = {}
    with _Cache(folder) as cache:
        for split in ("train", "val"):
            file = folder / f"{split}.bin"
            digest = cache.value(file, "sha256", lambda f=file: file_sha256(f), str)
            parts[split] = (dtype, file.stat().st_size, digest)
    return combine(parts)


def max_token_ids(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """The largest token id of each split (``arrays``: split -> the tokens of
    ``folder/<split>.bin``), cached in ``.ra_hash.json`` like the hash (one pass each)."""
    out = {}
    with _Cache(folder) as cache:
        for split, tokens in arrays.items():
            file = folder / f"{split}.bin"
            out[split] = cache.value(file, "max_id", lambda t=tokens: int(t.max()), int)
    return out


class _Cache:
    """The sidecar of per-file figures, keyed by each file's size and modification time;
    written back (atomically, when it can be) if anything was added."""

    def __init__(self, folder: Path):
        self.sidecar = folder / SIDECAR
        self.changed = False
        try:  # a sidecar that is not a regular file (a pipe would wait) is no cache
            regular = self.sidecar.is_file()
            self.data = json.loads(self.sidecar.read_text(encoding="utf-8")) if regular else {}
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data, dict):
            self.data = {}

    def __enter__(self) -> _Cache:
        return self

    def value(self, file: Path, name: str, compute, kind: type):
        st = file.stat()
        key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        entry = self.data.get(file.name)
        if not (isinstance(entry, dict) and all(entry.get(k) == v for k, v in key.items())):
            entry = dict(key)
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            entry[name] = compute()
            self.data[file.name] = entry
            self.changed = True
        return entry[name]

    def __exit__(self, *exc) -> None:
        if not self.changed or exc[0] is not None:
            return
        tmp = self.sidecar.with_name(f"{SIDECAR}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.sidecar)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
