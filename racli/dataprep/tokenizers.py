"""The tokenisers of `ra data prepare`.

Design notes: docs/data.md.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from racli.errors import BadInput

EOT_TEXT = "<|endoftext|>"
GPT2_VOCAB = 50257
GPT2_EOT = 50256
BYTE_VOCAB = 256
MIN_TRAIN_VOCAB = 257  # the 256 bytes and <|endoftext|>
MAX_TRAIN_VOCAB = 1 << 22
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
    r"""|\s+(?!\S)|\s+"""
)
OFFLINE_OPTIONS = "--tokenizer train:32768 (a BPE trained on your corpus) or --tokenizer bytes"


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # gpt2 | train | bytes
    vocab: int | None = None  # asked for (train)

    @property
    def name(self) -> str:
        return f"train:{self.vocab}" if self.kind == "train" else self.kind


def parse_tokenizer(text: str) -> TokenizerSpec:
    t = (text or "").strip().lower()
    if t in ("gpt2", "bytes"):
        return TokenizerSpec(t)
    if t.startswith("train:"):
        raw = t.split(":", 1)[1].replace("_", "")
        if raw.endswith("k") and _is_whole(raw[:-1]):
            raw = str(int(raw[:-1]) * 1024)
        if not _is_whole(raw):
            raise BadInput(
                f"--tokenizer {text}: train:VOCAB takes a whole number, e.g. train:32768"
            )
        vocab = int(raw)
        if not MIN_TRAIN_VOCAB <= vocab <= MAX_TRAIN_VOCAB:
            raise BadInput(
                f"--tokenizer {text}: the vocabulary must be between "
                f"{MIN_TRAIN_VOCAB} (the 256 bytes and end-of-text) and "
                f"{MAX_TRAIN_VOCAB}"
            )
        return TokenizerSpec("train", vocab)
    raise BadInput(f"unknown tokenizer '{text}' (valid: gpt2, train:VOCAB e.g. train:32768, bytes)")


def _is_whole(text: str) -> bool:
    """Whether `text` is ASCII digits alone: a whole number int() reads ('²' is a digit
    to str.isdigit, and int() refuses it)."""
    return text.isascii() and text.isdigit()


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabulary <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tiktoken_cache_dir() -> str:
    return (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    )


def load_gpt2():
    """tiktoken's GPT-2 encoding, or BadInput (one line) saying what is missing."""
    try:
        import tiktoken
    except ImportError:
        raise BadInput(
            f"--tokenizer gpt2 needs the tiktoken package (pip install tiktoken); "
            f"without it use {OFFLINE_OPTIONS}"
        ) from None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # requests/urllib/socket errors, hash mismatches, ...
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise BadInput(
            f"--tokenizer gpt2: tiktoken cannot get GPT-2's BPE files (vocab.bpe, encoder.json)"
            f": not in its cache {tiktoken_cache_dir()} and not downloadable "
            f"({exc.__class__.__name__}: {first}). Offline, either copy a tiktoken cache "
            f"folder that holds them and point TIKTOKEN_CACHE_DIR at it, or use "
            f"{OFFLINE_OPTIONS}"
        ) from None


def train_bpe(texts: Iterable[str], vocab: int) -> str:
    """A byte-level BPE of ``vocab`` tokens trained on ``texts``; its JSON (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=[EOT_TEXT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level alphabet: each of 256 printable characters -> its byte."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars = {b: b for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def tiktoken_from_json(tokenizer_json: str):
    """A tiktoken Encoding with the same vocabulary as a trained byte-level BPE.

    tiktoken encodes 3-4 times faster than ``tokenizers``; the trained BPE's token ids are
    kept (merge order = id order, which is tiktoken's rank order) and its pre-tokenisation is
    GPT-2's pattern, so both give the same ids (checked on the test corpus).
    """
    import json

    import tiktoken

    data = json.loads(tokenizer_json)
    special = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    decode = _byte_decoder()
    ranks = {
        bytes(decode[ch] for ch in text): int(i)
        for text, i in data["model"]["vocab"].items()
        if text not in special
    }
    return tiktoken.Encoding(
        "ra-trained-bpe",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=special,
        explicit_n_vocab=len(ranks) + len(special),
    )


class Encoder:
    """Documents -> (tokens, per-document lengths) for one tokeniser (see module docstring)."""

    def __init__(self, recipe: tuple):
        self.recipe = recipe
        kind = recipe[0]
        self.kind = kind
        self._enc = None
        if kind == "bytes":
            self.vocab_size, self.eot = BYTE_VOCAB, None
        elif kind == "gpt2":
            self._enc = recipe[1] if len(recipe) > 1 and recipe[1] is not None else load_gpt2()
            self.vocab_size = int(self._enc.n_vocab)
            self.eot = int(self._enc.eot_token)
        elif kind == "train":
            self._enc = None
            try:
                self._enc = tiktoken_from_json(recipe[1])
            except ImportError:
                pass
            if self._enc is not None:
                self.vocab_size = int(self._enc.n_vocab)
                self.eot = int(self._enc.eot_token)
            else:
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                from tokenizers import Tokenizer

                self._tok = Tokenizer.from_str(recipe[1])
                self.vocab_size = int(self._tok.get_vocab_size())
                eot = self._tok.token_to_id(EOT_TEXT)
                if eot is None:
                    raise BadInput(f"tokenizer.json has no {EOT_TEXT} token")
                self.eot = int(eot)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.dtype = dtype_for(self.vocab_size)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, self.dtype), np.zeros(0, np.int64)
        if self.kind == "bytes":
            parts = [t.encode("utf-8") for t in texts]
            lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
            tokens = np.frombuffer(b"".join(parts), dtype=np.uint8).astype(self.dtype)
            return tokens, lengths
        if self._enc is not None:
            ids = self._enc.encode_ordinary_batch(texts, num_threads=1)
        else:
            ids = [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        eot = np.array([self.eot], dtype=self.dtype)
        parts = []
        for x in ids:
            parts.append(np.array(x, dtype=self.dtype))
            parts.append(eot)
        return np.concatenate(parts), lengths

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "eot_token": self.eot, "dtype": self.dtype.name}
