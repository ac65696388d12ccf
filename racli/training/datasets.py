"""Training data: the token streams of a corpus, checked, split and identified.

Design notes: docs/training.md.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from racli.dataprep.identity import arrays_hash, files_hash, max_token_ids
from racli.dataprep.paths import NOT_REGULAR, is_special, user_path
from racli.errors import BadInput

BYTE_VOCAB_SIZE = 256
DEFAULT_BIN_VOCAB_SIZE = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as in nanoGPT
BUILTIN_NAME = "builtin:shakespeare"
_BUILTIN_SPECS = ("builtin", BUILTIN_NAME)
_BUILTIN_RESOURCE = "data/corpus.txt.gz"


class DataError(ValueError):
    """Unusable data: a missing path, empty or too-short data, a malformed prepared directory.

    The message is a single line naming the path and the reason.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class Dataset:
    name: str  # "builtin:shakespeare", or the path as given
    vocab_size: int
    train: np.ndarray  # 1-D token array: np.uint8 (bytes) or a uint16/uint32 memmap (.bin)
    val: np.ndarray
    content_hash: str | None = None  # racli.dataprep.identity's hash of the two splits
    tokenizer: str | None = None  # "bytes", "gpt2", "train:32768", ... (None: not known)

    @property
    def train_tokens(self) -> int:
        return int(self.train.shape[0])

    @property
    def val_tokens(self) -> int:
        return int(self.val.shape[0])


# --------------------------------------------------------------------------------------------
# loading


def load_dataset(spec: str | os.PathLike | None, val_fraction: float, block_size: int) -> Dataset:
    """Load the data named by ``spec``.

    ``None``, ``"builtin"`` or ``"builtin:shakespeare"``: the corpus shipped with the package.
    A ``.txt`` file, or a directory of ``.txt`` files (sorted by name and concatenated): byte
    tokens, the last ``val_fraction`` of them held out for validation. A directory containing
    ``train.bin`` and ``val.bin``: nanoGPT token shards (``val_fraction`` is not used).
    Raises :class:`DataError` when the data is missing, empty, or either split is shorter than
    ``block_size + 2`` tokens.
    """
    if block_size < 1:
        raise DataError(f"block_size must be at least 1, got {block_size}")
    if spec is None or (isinstance(spec, str) and spec.strip() in _BUILTIN_SPECS):
        text = _read_builtin()
        return _split_bytes(BUILTIN_NAME, text, val_fraction, block_size)
    if isinstance(spec, str) and spec.strip().startswith("builtin:"):
        raise DataError(f"{spec}: unknown built-in corpus (available: {BUILTIN_NAME})")
    name = os.fspath(spec)
    if not name.strip():
        raise DataError("empty data path (use 'builtin' for the built-in corpus)")
    try:
        path = user_path(name)
    except BadInput as exc:
        raise DataError(str(exc)) from None
    if not path.exists():
        raise DataError(f"{name}: no such file or directory")
    _check_regular(name, path)
    if path.is_dir():
        unfinished = sorted(p.name for p in path.glob("*.bin.part"))
        if unfinished:
            raise DataError(
                f"{name}: holds {', '.join(unfinished)}: the unfinished output of an "
                f"interrupted `ra data prepare`; prepare the data again"
            )
        if (path / "train.bin").exists() or (path / "val.bin").exists():
            return _load_bin_dir(name, path, block_size)
        return _split_bytes(name, _read_txt_dir(name, path), val_fraction, block_size)
    if path.suffix.lower() == ".bin":
        raise DataError(
            f"{name}: a .bin shard; pass the directory that holds train.bin and val.bin instead"
        )
    return _split_bytes(name, _read_file(name, path), val_fraction, block_size)


def _read_builtin() -> np.ndarray:
    resource = importlib.resources.files("racli") / _BUILTIN_RESOURCE
    try:
        blob = resource.read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"{BUILTIN_NAME}: built-in corpus racli/{_BUILTIN_RESOURCE} is missing "
            f"from the installed package ({exc.__class__.__name__})"
        ) from exc
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError) as exc:
        raise DataError(f"{BUILTIN_NAME}: built-in corpus is not valid gzip ({exc})") from exc
    return np.frombuffer(bytearray(raw), dtype=np.uint8)


def _check_regular(name: str, path: Path) -> None:
    """DataError for a device, pipe or socket: reading one may never end (a pipe waits
    for a writer, /dev/zero has no end)."""
    if is_special(path):
        raise DataError(f"{name} {NOT_REGULAR}")


def _read_file(name: str, path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise DataError(f"{name}: file is empty")
    if data[:16].tobytes() == _SQLITE_HEADER:
        raise DataError(
            f"{name}: a SQLite database (a results store?), not text: pass a text file, a "
            f"folder of .txt files or a folder that `ra data prepare` wrote"
        )
    return data


#: the first bytes of every SQLite database file
_SQLITE_HEADER = b"SQLite format 3\x00"


def _read_txt_dir(name: str, path: Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise DataError(f"{name}: directory has no .txt files and no train.bin/val.bin")
    parts: list[bytes] = []
    for file in files:
        try:
            chunk = file.read_bytes()
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from exc
        if not chunk:
            continue
        parts.append(chunk if chunk.endswith(b"\n") else chunk + b"\n")
    if not parts:
        raise DataError(f"{name}: all {len(files)} .txt files are empty")
    return np.frombuffer(bytearray(b"".join(parts)), dtype=np.uint8)


def _split_bytes(name: str, tokens: np.ndarray, val_fraction: float, block_size: int) -> Dataset:
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"{name}: val_fraction must be between 0 and 1, got {val_fraction}")
    n = int(tokens.shape[0])
    if n == 0:
        raise DataError(f"{name}: no data")
    n_val = round(n * float(val_fraction))
    train, val = tokens[: n - n_val], tokens[n - n_val :]
    _check_split(name, "train", train, block_size, hint="use a larger corpus or a smaller block")
    _check_split(
        name,
        "validation",
        val,
        block_size,
        hint="raise val_fraction, use a larger corpus or a smaller block",
    )
    return Dataset(
        name=name,
        vocab_size=BYTE_VOCAB_SIZE,
        train=train,
        val=val,
        content_hash=arrays_hash(train, val),
        tokenizer="bytes",
    )


def _check_split(name: str, split: str, tokens: np.ndarray, block_size: int, hint: str) -> None:
    need = block_size + 2
    have = int(tokens.shape[0])
    if have < need:
        raise DataError(
            f"{name}: {split} split has {have} tokens, fewer than block_size + 2 = {need} ({hint})"
        )


def _load_bin_dir(name: str, path: Path, block_size: int) -> Dataset:
    meta = _read_meta_json(path / "meta.json")
    dtype = np.dtype(meta["dtype"]) if meta else np.dtype(np.uint16)
    arrays = {}
    for split in ("train", "val"):
        file = path / f"{split}.bin"
        _check_regular(str(file), file)
        if not file.is_file():
            other = "val" if split == "train" else "train"
            raise DataError(f"{name}: has {other}.bin but no {split}.bin")
        size = file.stat().st_size
        if size == 0:
            raise DataError(f"{file}: file is empty")
        if size % dtype.itemsize:
            raise DataError(
                f"{file}: size {size} bytes is not a whole number of {dtype.name} tokens"
            )
        if meta and size != meta["tokens"][split] * dtype.itemsize:
            raise DataError(
                f"{file}: holds {size // dtype.itemsize} tokens, meta.json says "
                f"{meta['tokens'][split]}: incomplete or altered; prepare it again"
            )
        arrays[split] = np.memmap(file, dtype=dtype, mode="r")
    _check_split(name, "train", arrays["train"], block_size, hint="train.bin is too short")
    _check_split(name, "validation", arrays["val"], block_size, hint="val.bin is too short")
    if meta:
        vocab_size, digest = meta["vocab_size"], meta["content_hash"]
        tokenizer = meta["tokenizer"]
        _check_token_ids(path, arrays, vocab_size, "meta.json")
    else:  # a nanoGPT folder: its ids are checked against the vocabulary (one pass each)
        vocab_size = _read_meta_vocab(path / "meta.pkl")
        source = "meta.pkl" if (path / "meta.pkl").exists() else "the default without meta.pkl"
        _check_token_ids(path, arrays, vocab_size, source)
        try:
            digest = files_hash(path, dtype.name)
        except OSError as exc:
            raise DataError(f"{name}: cannot read the token files ({exc.strerror or exc})") from exc
        tokenizer = None
    return Dataset(
        name=name,
        vocab_size=vocab_size,
        train=arrays["train"],
        val=arrays["val"],
        content_hash=digest,
        tokenizer=tokenizer,
    )


def _read_meta_json(meta: Path) -> dict | None:
    """meta.json of `ra data prepare`, checked; None when the folder has none."""
    if not meta.exists():
        return None
    _check_regular(str(meta), meta)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta}: cannot read meta.json ({exc.__class__.__name__}: {exc})") from exc
    try:
        dtype = info["dtype"]
        if dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype {dtype!r} is not uint16 or uint32")
        vocab = info["vocab_size"]
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
            raise ValueError(f"vocab_size {vocab!r} is not a positive integer")
        if vocab > np.iinfo(np.dtype(dtype)).max + 1:
            raise ValueError(f"vocab_size {vocab} does not fit {dtype} tokens")
        tokens = {s: int(info["tokens"][s]) for s in ("train", "val")}
        digest = info["content_hash"]
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError("content_hash is not a sha256")
        tok = info.get("tokenizer") or {}
        name = tok.get("name") if isinstance(tok, dict) else str(tok)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta}: not a meta.json of ra data prepare ({exc})") from exc
    return {
        "dtype": dtype,
        "vocab_size": vocab,
        "tokens": tokens,
        "content_hash": digest,
        "tokenizer": name,
    }


def _check_token_ids(path: Path, arrays: dict, vocab_size: int, source: str) -> None:
    """Every token id must index the vocabulary (one pass over each split, cached beside
    them by size and modification time, like the content hash)."""
    try:
        tops = max_token_ids(path, arrays)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the token files ({exc.strerror or exc})") from exc
    for split, top in tops.items():
        if top >= vocab_size:
            raise DataError(
                f"{path / f'{split}.bin'}: token id {top} is outside the vocabulary: "
                f"vocab_size is {vocab_size} ({source}), so ids must be below it"
            )


def _read_meta_vocab(meta: Path) -> int:
    if not meta.exists():
        return DEFAULT_BIN_VOCAB_SIZE
    _check_regular(str(meta), meta)
    try:
        with meta.open("rb") as fh:
            info = pickle.load(fh)
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"{meta}: cannot read meta.pkl ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(info, dict) or "vocab_size" not in info:
        raise DataError(f"{meta}: meta.pkl is not a dict with a 'vocab_size' key")
    vocab = info["vocab_size"]
    if isinstance(vocab, bool) or not isinstance(vocab, (int, np.integer)):
        raise DataError(f"{meta}: vocab_size must be an integer, got {vocab!r}")
    if not 1 <= int(vocab) <= 65536:
        raise DataError(f"{meta}: vocab_size {int(vocab)} does not fit uint16 tokens (1..65536)")
    return int(vocab)


def dataset_identity(dataset: Dataset) -> dict:
    """What a run's config records about its data (part of config_hash): a name, its size,
    the tokenizer and the content hash, not where it lives, so runs on machines with
    different paths to the same corpus stay comparable and runs on different data never
    pool."""
    name = dataset.name
    if not name.startswith("builtin:"):
        name = Path(name.rstrip("/\\")).name or name
    return {
        "name": name,
        "vocab_size": dataset.vocab_size,
        "train_tokens": dataset.train_tokens,
        "val_tokens": dataset.val_tokens,
        "tokenizer": dataset.tokenizer,
        "content_hash": dataset.content_hash,
    }


# --------------------------------------------------------------------------------------------
# byte-level text helpers


def encode_text(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as byte tokens (the tokenisation used for text data)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode_bytes(tokens) -> str:
    """Inverse of :func:`encode_text`; invalid UTF-8 sequences become U+FFFD."""
    arr = np.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens)  # a tensor or an array
    return bytes(arr.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# batches
