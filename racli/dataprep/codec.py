"""Text <-> token ids with a corpus's own tokenizer (prompts in, samples out).

`codec_for(name, tokenizer_json, vocab_size)` gives the tokenizer a run was trained
with, by the name its data recorded (meta.json's `tokenizer.name`): `bytes` (the
built-in corpus, text files), `gpt2` (tiktoken's GPT-2 BPE), `train:N` (the BPE
trained by `ra data prepare`, from its tokenizer.json). A nanoGPT folder without
meta.json names none: the characters of its meta.pkl (`nanogpt_chars`) when it has
them, else GPT-2's ids when the vocabulary is GPT-2's size or more, as nanoGPT's
sample.py does. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from racli.dataprep import tokenizers as toks
from racli.dataprep.writer import META, TOKENIZER_FILE
from racli.errors import BadInput

REPLACEMENT = "\ufffd".encode()  # an id the tokenizer does not know decodes to this


class TextCodec:
    """encode(text) -> ids; decode(ids) -> text (bytes that are not UTF-8 become U+FFFD)."""

    def __init__(self, name: str, encoding=None, chars: list[str] | None = None):
        self.name = name
        self._enc = encoding  # a tiktoken Encoding; None: bytes (or chars)
        self._chars = chars  # a nanoGPT character vocabulary: id -> character

    @property
    def eot(self) -> int | None:
        """The end-of-text id (None for bytes)."""
        return None if self._enc is None else int(self._enc.eot_token)

    def encode(self, text: str) -> list[int]:
        if self._chars is not None:
            ids = {c: i for i, c in enumerate(self._chars)}
            unknown = sorted({c for c in text if c not in ids})
            if unknown:
                raise BadInput(f"the run's characters do not include {''.join(unknown)!r}")
            return [ids[c] for c in text]
        if self._enc is None:
            return list(text.encode("utf-8"))
        return list(self._enc.encode(text, allowed_special="all"))

    def decode(self, ids: Sequence[int]) -> str:
        if self._chars is not None:
            n = len(self._chars)
            return "".join(self._chars[i] if 0 <= i < n else "\ufffd" for i in ids)
        if self._enc is None:
            data = bytes(i if 0 <= i < 256 else 0xFF for i in ids)  # 0xFF: never valid UTF-8
        else:
            n = self._enc.n_vocab
            data = b"".join(
                self._enc.decode_single_token_bytes(i) if 0 <= i < n else REPLACEMENT for i in ids
            )
        return data.decode("utf-8", errors="replace")


def codec_for(
    name: str | None, tokenizer_json: str | None, vocab_size: int, chars: list[str] | None = None
) -> TextCodec:
    """The codec of a tokenizer `name` (`chars`: a nanoGPT character vocabulary, for data
    that names none); BadInput (one line) when it cannot be had."""
    if name is None and chars is not None:
        return TextCodec("chars", chars=chars)
    if name == "bytes":
        return TextCodec("bytes")
    if name == "gpt2" or (name is None and vocab_size >= toks.GPT2_VOCAB):
        return TextCodec("gpt2", toks.load_gpt2())
    if name is not None and name.startswith("train:"):
        if tokenizer_json is None:
            raise BadInput(f"the {name} tokenizer's file ({TOKENIZER_FILE}) is missing")
        try:
            return TextCodec(name, toks.tiktoken_from_json(tokenizer_json))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(
                f"{TOKENIZER_FILE} is not a tokenizer of ra data prepare ({exc})"
            ) from exc
    if name is None:
        raise BadInput(
            f"the data names no tokenizer (a nanoGPT folder without meta.json) and its "
            f"vocabulary ({vocab_size}) is not GPT-2's: its token ids cannot be turned into text"
        )
    raise BadInput(f"unknown tokenizer {name!r} (known: bytes, gpt2, train:N)")


def needs_file(name: str | None) -> bool:
    """Whether tokenizer `name` lives in a file beside the data (a trained BPE)."""
    return name is not None and name.startswith("train:")


def tokenizer_json(
    folder: str | Path | None, name: str | None, content_hash: str | None
) -> str | None:
    """The tokenizer.json text of a run's data folder when its tokenizer is a trained BPE
    (else None). BadInput when the file is gone or the folder was prepared again since the
    run (its meta.json no longer holds the run's content hash)."""
    if not needs_file(name):
        return None
    where = Path(folder) if folder else None
    if where is None or not (where / TOKENIZER_FILE).is_file():
        raise BadInput(
            f"the run's {name} tokenizer was in its data folder ({where or 'unknown'}), "
            f"which holds no {TOKENIZER_FILE} now"
        )
    try:
        meta = json.loads((where / META).read_text(encoding="utf-8"))
        text = (where / TOKENIZER_FILE).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the tokenizer of {where}: {exc}") from exc
    if content_hash is not None and meta.get("content_hash") != content_hash:
        raise BadInput(
            f"{where} was prepared again since the run (its content hash differs from the "
            f"run's): its tokenizer may not be the run's"
        )
    return text


def nanogpt_chars(folder: str | Path | None) -> list[str] | None:
    """The character vocabulary of a nanoGPT folder (meta.pkl's `itos`, as its char-level
    prepare.py writes), or None when it has none."""
    import pickle

    meta = Path(folder) / "meta.pkl" if folder else None
    if meta is None or not meta.is_file():
        return None
    try:
        with meta.open("rb") as fh:
            itos = pickle.load(fh).get("itos")
        chars = [itos[i] for i in range(len(itos))]
    except Exception:  # no itos, or not the char-level form: not a character vocabulary
        return None
    return chars if all(isinstance(c, str) for c in chars) else None
