"""What the SOURCE arguments of `ra data prepare` name, read as chunks of documents.

Design notes: docs/data.md.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from racli.dataprep.paths import user_path
from racli.errors import BadInput

DEFAULT_GLOBS = ("**/*.txt", "**/*.md")
DOC_CHARS = 64 * 1024  # long text files are cut into documents of about this many characters
CHUNK_BYTES = 2 << 20  # work handed to a worker at a time
CHUNK_FILES = 512


class SourceError(BadInput):
    """A source that cannot be read as asked: one line naming it and why."""


# ---------------------------------------------------------------------------- chunks


@dataclass
class FileChunk:
    paths: list[str]
    strict: bool  # a file named on the command line: unreadable means exit 2, not skip


@dataclass
class LinesChunk:
    origin: str
    first_line: int
    lines: list[bytes]
    text_field: str


@dataclass
class TextChunk:
    texts: list[str]


@dataclass
class Documents:
    texts: list[str]
    nbytes: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason" of skipped files


def cut_text(text: str, doc_chars: int = DOC_CHARS) -> list[str]:
    """``text`` as pieces of at least ``doc_chars`` characters, cut after blank lines."""
    if len(text) <= doc_chars:
        return [text]
    pieces, start, n = [], 0, len(text)
    while n - start > doc_chars:
        cut = text.find("\n\n", start + doc_chars)
        if cut < 0:
            break
        pieces.append(text[start : cut + 2])
        start = cut + 2
    if start < n:
        pieces.append(text[start:])
    return pieces


def read_text_file(path: str) -> tuple[str | None, str | None, int]:
    """(text, None, bytes) or (None, reason, bytes) for an unusable file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})", 0
    if not raw:
        return None, "file is empty", 0
    if b"\x00" in raw:
        return None, "binary file (holds NUL bytes), not text", len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"binary file or not UTF-8 text (byte {exc.start})", len(raw)
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return None, "file holds only white space", len(raw)
    return text, None, len(raw)


def chunk_documents(chunk, doc_chars: int = DOC_CHARS) -> Documents:
    """The documents of one chunk, in order."""
    if isinstance(chunk, TextChunk):
        texts = [t for t in chunk.texts if t]
        return Documents(texts, sum(len(t) for t in texts))
    docs = Documents([])
    if isinstance(chunk, FileChunk):
        for path in chunk.paths:
            text, reason, nbytes = read_text_file(path)
            docs.nbytes += nbytes
            if text is None:
                if chunk.strict:
                    raise SourceError(f"{path}: {reason}")
                if nbytes and text is None and "white space" not in reason:
                    docs.skipped.append(f"{path}: {reason}")  # empty files are no loss
                continue
            docs.texts.extend(cut_text(text, doc_chars))
        return docs
    if isinstance(chunk, LinesChunk):
        name = chunk.text_field
        for i, line in enumerate(chunk.lines):
            docs.nbytes += len(line)
            if not line.strip():
                continue
            where = f"{chunk.origin}:{chunk.first_line + i}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise SourceError(
                    f"{where}: not a JSON line ({exc.__class__.__name__}: "
                    f"{str(exc).splitlines()[0][:80]})"
                ) from None
            docs.texts.extend(_field_text(record, name, where))
        return docs
    raise TypeError(f"unknown chunk {type(chunk).__name__}")


def _field_text(record, name: str, where: str) -> list[str]:
    if not isinstance(record, dict):
        raise SourceError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if name not in record:
        fields = ", ".join(list(map(str, record))[:10]) or "none"
        raise SourceError(
            f"{where}: no field '{name}' (fields: {fields}); choose one with --text-field"
        )
    value = record[name]
    if value is None:
        return []
    if not isinstance(value, str):
        raise SourceError(f"{where}: field '{name}' holds {type(value).__name__}, not text")
    return [value] if value else []


# ---------------------------------------------------------------------------- sources


class Source(ABC):
    kind = "?"

    @abstractmethod
    def describe(self) -> dict: ...

    def estimated_bytes(self) -> int | None:
        return None

    @abstractmethod
    def chunks(self) -> Iterator: ...


class TextFileSource(Source):
    kind = "text"

    def __init__(self, path: Path, spec: str):
        self.path, self.spec = path, spec
        self.size = path.stat().st_size
        if self.size == 0:
            raise SourceError(f"{spec}: file is empty")
        # read it through once now, so that a file that is not text is refused before any work
        decoder = codecs.getincrementaldecoder("utf-8")()
        blank = True
        try:
            with open(path, "rb") as fh:
                offset = 0
                while block := fh.read(CHUNK_BYTES):
                    if b"\x00" in block:
                        raise SourceError(f"{spec}: binary file (holds NUL bytes), not text")
                    try:
                        blank = not decoder.decode(block).strip() and blank
                    except UnicodeDecodeError as exc:
                        raise SourceError(
                            f"{spec}: binary file or not UTF-8 text (byte {offset + exc.start})"
                        ) from None
                    offset += len(block)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SourceError(f"{spec}: not UTF-8 text (it ends inside a character)") from None
        except OSError as exc:
            raise SourceError(f"{spec}: cannot read ({exc.strerror or exc})") from None
        if blank:
            raise SourceError(f"{spec}: file holds only white space")

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.spec, "bytes": self.size}

    def estimated_bytes(self) -> int:
        return self.size

    def chunks(self):
        yield FileChunk([str(self.path)], strict=True)


class FolderSource(Source):
    kind = "folder"

    def __init__(
        self,
        path: Path,
        spec: str,
        globs: list[str],
        skip: Callable[[Path], bool] | None = None,
    ):
        self.path, self.spec, self.globs = path, spec, list(globs or DEFAULT_GLOBS)
        found: dict[str, Path] = {}
        for pattern in self.globs:
            if ".." in pattern.replace("\\", "/").split("/"):
                raise SourceError(
                    f"--glob {pattern!r}: a pattern selects files inside the folder; '..' "
                    "would read outside it (give that folder as a SOURCE instead)"
                )
            try:
                matches = list(path.glob(pattern))
            except (ValueError, NotImplementedError) as exc:
                raise SourceError(f"--glob {pattern!r}: not a usable pattern ({exc})") from None
            for p in matches:
                if p.is_file() and not (skip and skip(p)):
                    found.setdefault(p.relative_to(path).as_posix(), p)
        if not found:
            raise SourceError(
                f"{spec}: no files match {', '.join(repr(g) for g in self.globs)}"
                f" (set the patterns with --glob, e.g. --glob '**/*.py')"
            )
        self.files = [str(found[k]) for k in sorted(found)]
        self.size = 0
        for f in self.files:
            try:
                self.size += os.stat(f).st_size
            except OSError:
                pass
        if self.size == 0:
            raise SourceError(f"{spec}: all {len(self.files)} matching files are empty")

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.spec,
            "globs": self.globs,
            "files": len(self.files),
            "bytes": self.size,
        }

    def estimated_bytes(self) -> int:
        return self.size

    def chunks(self):
        batch, size = [], 0
        for f in self.files:
            batch.append(f)
            try:
                size += os.stat(f).st_size
            except OSError:
                pass
            if size >= CHUNK_BYTES or len(batch) >= CHUNK_FILES:
                yield FileChunk(batch, strict=False)
                batch, size = [], 0
        if batch:
            yield FileChunk(batch, strict=False)


class JsonlSource(Source):
    kind = "jsonl"

    def __init__(self, path: Path, spec: str, text_field: str):
        self.path, self.spec, self.text_field = path, spec, text_field
        self.gz = spec.lower().endswith(".gz")
        self.size = path.stat().st_size
        if self.size == 0:
            raise SourceError(f"{spec}: file is empty")
        first = None
        try:
            with self._open() as fh:
                for number, line in enumerate(fh, 1):
                    if line.strip():
                        first = (number, line)
                        break
        except (OSError, EOFError) as exc:
            raise SourceError(f"{spec}: cannot read ({exc.__class__.__name__}: {exc})") from None
        if first is None:
            raise SourceError(f"{spec}: no records (only blank lines)")
        # the first record shows a wrong --text-field or a file that is not JSON lines at once
        chunk_documents(LinesChunk(spec, first[0], [first[1]], text_field))

    def _open(self):
        return gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.spec,
            "text_field": self.text_field,
            "bytes": self.size,
        }

    def estimated_bytes(self) -> int:
        return self.size * (4 if self.gz else 1)

    def chunks(self):
        lines, size, first = [], 0, 1
        try:
            with self._open() as fh:
                for number, line in enumerate(fh, 1):
                    lines.append(line)
                    size += len(line)
                    if size >= CHUNK_BYTES:
                        yield LinesChunk(self.spec, first, lines, self.text_field)
                        lines, size, first = [], 0, number + 1
        except (OSError, EOFError) as exc:
            raise SourceError(
                f"{self.spec}: cannot read ({exc.__class__.__name__}: {exc})"
            ) from None
        if lines:
            yield LinesChunk(self.spec, first, lines, self.text_field)


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, path: Path, spec: str, text_field: str):
        self.path, self.spec, self.text_field = path, spec, text_field
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError(
                f"{spec}: reading .parquet needs pyarrow: pip install 'ra[parquet]'"
            ) from None
        self.size = path.stat().st_size
        if self.size == 0:
            raise SourceError(f"{spec}: file is empty")
        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own error types for bad files
            raise SourceError(
                f"{spec}: not a readable Parquet file "
                f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
            ) from None
        names = self._file.schema_arrow.names
        if text_field not in names:
            raise SourceError(
                f"{spec}: no column '{text_field}' (columns: "
                f"{', '.join(names[:10]) or 'none'}); choose one with --text-field"
            )
        kind = self._file.schema_arrow.field(text_field).type
        import pyarrow as pa

        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise SourceError(f"{spec}: column '{text_field}' holds {kind}, not text")
        self.rows = self._file.metadata.num_rows
        if self.rows == 0:
            raise SourceError(f"{spec}: no rows")

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.spec,
            "text_field": self.text_field,
            "rows": self.rows,
            "bytes": self.size,
        }

    def estimated_bytes(self) -> int:
        return self.size * 3

    def chunks(self):
        for batch in self._file.iter_batches(batch_size=1024, columns=[self.text_field]):
            yield TextChunk([t for t in batch.column(0).to_pylist() if t])


def hf_load_dataset(name: str, subset: str | None, split: str):
    """A streaming Hugging Face dataset (an iterable of dict records)."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"hf:{name}: Hugging Face datasets need the 'datasets' package: pip install 'ra[hf]'"
        ) from None
    return datasets.load_dataset(name, subset, split=split, streaming=True)


class HubSource(Source):
    kind = "hf"

    def __init__(self, name: str, text_field: str, subset: str | None, split: str):
        if not name:
            raise SourceError("hf:: give a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu")
        self.name, self.text_field, self.subset, self.split = name, text_field, subset, split
        self._stream = None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "subset": self.subset,
            "split": self.split,
            "text_field": self.text_field,
        }

    def _offline(self, exc: BaseException) -> SourceError:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return SourceError(
            f"hf:{self.name}: cannot read it from the Hugging Face hub "
            f"({exc.__class__.__name__}: {first}); without network, prepare "
            f"local files instead (.txt/.md, folders with --glob, .jsonl, "
            f".parquet)"
        )

    def open(self) -> None:
        """Reach the hub now (so that a missing network is reported before any work)."""
        try:
            self._stream = hf_load_dataset(self.name, self.subset, self.split)
        except BadInput:
            raise
        except Exception as exc:  # network and hub errors come in many types
            raise self._offline(exc) from None

    def chunks(self):
        if self._stream is None:
            self.open()
        stream, self._stream = self._stream, None
        texts, size, n = [], 0, 0
        try:
            for record in stream:
                n += 1
                for text in _field_text(record, self.text_field, f"hf:{self.name} record {n}"):
                    texts.append(text)
                    size += len(text)
                if size >= CHUNK_BYTES:
                    yield TextChunk(texts)
                    texts, size = [], 0
        except BadInput:
            raise
        except Exception as exc:
            raise self._offline(exc) from None
        if texts:
            yield TextChunk(texts)
        if n == 0:
            raise SourceError(f"hf:{self.name}: the split '{self.split}' has no records")


# ---------------------------------------------------------------------------- parsing


def _check_once(where: str, spec: str, seen: dict[str, str], *, inside: bool) -> None:
    """SourceError when `where` was named already, or (`inside`: a file or folder) lies in
    or holds a folder named already: its documents would be split twice, into train and
    validation both, and the validation loss would measure memorisation."""
    for other, other_spec in seen.items():
        same = where == other
        nested = inside and (Path(where).is_relative_to(other) or Path(other).is_relative_to(where))
        if same or nested:
            how = "is given twice" if same else "overlaps"
            raise SourceError(
                f"SOURCE {spec} {how} ({other_spec}): its documents would fall in both the "
                "train and the validation split"
            )
    seen[where] = spec


def open_sources(
    specs: list[str],
    *,
    globs: list[str] | None = None,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    skip: Callable[[Path], bool] | None = None,
) -> list[Source]:
    """The sources named on the command line, each checked; SourceError for a bad one.
    A folder's files for which ``skip`` is true are left out (the output of this prepare)."""
    if not specs:
        raise SourceError(
            "give at least one SOURCE (a file, a folder, .jsonl, .parquet or hf:NAME)"
        )
    out: list[Source] = []
    seen: dict[str, str] = {}  # where a source reads -> the SOURCE naming it
    for spec in specs:
        if spec.startswith("hf:"):
            _check_once(spec.strip(), spec, seen, inside=False)
            out.append(HubSource(spec[3:].strip(), text_field, subset, split))
            continue
        path = user_path(spec, "SOURCE")
        if not path.exists():
            raise SourceError(f"{spec}: no such file or folder")
        _check_once(str(path.resolve()), spec, seen, inside=True)
        if path.is_dir():
            out.append(FolderSource(path, spec, globs or [], skip))
            continue
        if not path.is_file():
            raise SourceError(f"{spec}: not a regular file or folder")
        low = spec.lower()
        if low.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
            out.append(JsonlSource(path, spec, text_field))
        elif low.endswith(".parquet"):
            out.append(ParquetSource(path, spec, text_field))
        elif low.endswith(".gz"):
            raise SourceError(
                f"{spec}: compressed text is read as .jsonl.gz only; decompress it first"
            )
        else:
            out.append(TextFileSource(path, spec))
    if globs and not any(isinstance(s, FolderSource) for s in out):
        raise SourceError("--glob selects files in folders, and no SOURCE is a folder")
    if not any(isinstance(s, HubSource) for s in out):
        if subset is not None:
            raise SourceError(
                "--subset chooses a Hub dataset's configuration, and no SOURCE is hf:"
            )
        if split != "train":
            raise SourceError("--split chooses a Hub dataset's split, and no SOURCE is hf:")
    if text_field != "text" and not any(
        isinstance(s, (HubSource, JsonlSource, ParquetSource)) for s in out
    ):
        raise SourceError(
            "--text-field names a record's field, and no SOURCE is .jsonl, .parquet or hf:"
        )
    return out
