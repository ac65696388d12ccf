"""The output folder of `ra data prepare`, written so that it is complete or absent.

Everything is written into a temporary folder beside the output (``.NAME.tmp-PID-XXXX``):
the token files as ``train.bin.part`` / ``val.bin.part`` while they grow, renamed to
``train.bin`` / ``val.bin`` only once complete, then ``meta.json`` last, then the folder is
renamed to the output. An interrupted prepare removes its temporary folder; one killed
outright leaves only ``.part`` files, which `ra train` does not accept.

An output that already holds a prepared dataset is replaced only with ``force``; a non-empty
folder that is not a prepared dataset is never replaced. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from racli.dataprep.identity import combine
from racli.errors import BadInput

META = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "ra-data/1"
SPLITS = ("train", "val")


def is_prepared(folder: Path) -> bool:
    return any((folder / name).exists() for name in (META, "train.bin", "val.bin", "meta.pkl"))


def check_output(out: Path, force: bool) -> None:
    """BadInput unless ``out`` may be written (absent, an empty folder, or a prepared dataset
    with ``force``)."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise BadInput(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()):
            if not is_prepared(out):
                raise BadInput(
                    f"--out {out}: a non-empty folder that is not a prepared "
                    f"dataset; choose a new folder"
                )
            if not force:
                raise BadInput(
                    f"--out {out}: already holds a prepared dataset; add --force to replace it"
                )
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"--out {out}: {parent} is not a folder")


class DatasetWriter:
    """Appends token arrays to the two splits, hashing as it goes; ``finish`` publishes."""

    def __init__(self, out: Path, dtype: np.dtype, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.dtype = np.dtype(dtype)
        check_output(self.out, force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-{os.getpid()}-", dir=self.out.parent)
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is not
        self._files = {s: open(self.tmp / f"{s}.bin.part", "wb") for s in SPLITS}
        self._hash = {s: hashlib.sha256() for s in SPLITS}
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.done = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()

    def write_file(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text, encoding="utf-8")

    def add(self, split: str, tokens: np.ndarray, documents: int) -> None:
        if tokens.size:
            data = np.ascontiguousarray(tokens, dtype=self.dtype)
            view = memoryview(data).cast("B")
            self._files[split].write(view)
            self._hash[split].update(view)
            self.tokens[split] += int(data.shape[0])
        self.documents[split] += int(documents)

    def content_hash(self) -> str:
        size = self.dtype.itemsize
        return combine(
            {s: (self.dtype.name, self.tokens[s] * size, self._hash[s].hexdigest()) for s in SPLITS}
        )

    def finish(self, meta: dict) -> dict:
        """Close the files, write meta.json (with counts and content hash) and move the
        folder into place. Returns the meta written."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta = {
            "format": FORMAT,
            **meta,
            "dtype": self.dtype.name,
            "tokens": dict(self.tokens),
            "documents": dict(self.documents),
            "content_hash": self.content_hash(),
        }
        for s in SPLITS:
            os.replace(self.tmp / f"{s}.bin.part", self.tmp / f"{s}.bin")
        self.write_file(META, json.dumps(meta, indent=2) + "\n")
        self._publish()
        self.done = True
        return meta

    def _publish(self) -> None:
        out = self.out
        old = None
        if out.exists():
            check_output(out, self.force)  # nothing else appeared meanwhile
            if any(out.iterdir()):
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
            else:
                out.rmdir()
        os.replace(self.tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.done = True
