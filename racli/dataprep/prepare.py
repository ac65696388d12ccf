"""The job of `ra data prepare`: sources -> documents -> tokens -> a prepared folder.

    meta = prepare(PrepareSettings(sources=["corpus/"], out=Path("data/corpus"),
                                   globs=["**/*.py"], tokenizer="train:32768"))

Documents are tokenised in worker processes (``workers``, default: every core), chunk by
chunk and in order, so the output does not depend on the number of workers. Each document
goes whole to the training or the validation split (``split.val_mask``, from ``seed``).
``max_tokens`` stops after the document that reaches that many tokens (both splits).
For ``train:VOCAB`` the BPE is first trained on a sample of the training documents (at most
``tokenizer_sample_bytes`` of text, drawn across the corpus; validation documents are never
in it). No torch here.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from racli.dataprep import sources as src
from racli.dataprep import tokenizers as toks
from racli.dataprep.paths import user_path
from racli.dataprep.split import uniform, val_mask
from racli.dataprep.writer import (
    TOKENIZER_FILE,
    DatasetWriter,
    check_output,
    check_writable,
    is_prepared,
    output_paths,
    tidy_leftovers,
)
from racli.errors import BadInput
from racli.names import check_seed

DEFAULT_VAL_FRACTION = 0.05
DEFAULT_SAMPLE_BYTES = 100_000_000
MAX_BYTES_PER_TOKEN = 8  # bounds the text read for the BPE sample under --max-tokens
WORKERS_PER_CORE = 4  # past this, more processes only wait (and starting them can hang)


def max_workers() -> int:
    """The most tokenising processes a prepare starts: WORKERS_PER_CORE per core."""
    return WORKERS_PER_CORE * (os.cpu_count() or 1)


@dataclass
class PrepareSettings:
    sources: list[str]
    out: Path | str
    tokenizer: str = "gpt2"
    globs: list[str] = field(default_factory=list)
    text_field: str = "text"
    subset: str | None = None
    split: str = "train"
    max_tokens: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    workers: int | None = None  # None: every core
    force: bool = False
    tokenizer_sample_bytes: int = DEFAULT_SAMPLE_BYTES
    doc_chars: int = src.DOC_CHARS

    def check(self) -> None:
        if not 0.0 < self.val_fraction <= 0.5:
            raise BadInput(f"--val-fraction must be in (0, 0.5], got {self.val_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BadInput(f"--max-tokens must be a positive number, got {self.max_tokens}")
        if self.workers is not None and self.workers < 1:
            raise BadInput(f"--workers must be at least 1, got {self.workers}")
        if self.workers is not None and self.workers > max_workers():
            raise BadInput(
                f"--workers must be at most {max_workers()} ({WORKERS_PER_CORE} per core on "
                f"this machine), got {self.workers}"
            )
        check_seed(self.seed)
        if self.tokenizer_sample_bytes < 1:
            raise BadInput("the tokenizer sample must be at least one byte")
        if not self.text_field:
            raise BadInput("--text-field must not be empty")


def parse_count(text: str | int | None, option: str) -> int | None:
    """'120M', '2.5G', '50_000', '1e8' -> an int; None stays None."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(t[-1:].lower(), 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise BadInput(f"{option}: expected a number such as 120M or 50000, got {text!r}") from None
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise BadInput(f"{option}: expected a positive whole number, got {text!r}")
    return int(value)


# ---------------------------------------------------------------------------- progress


class NullProgress:
    def note(self, text: str) -> None:
        pass

    def start(self, total_bytes: int | None) -> None:
        pass

    def update(self, *, documents: int, tokens: int, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleProgress(NullProgress):
    """A Rich progress bar on stderr: documents, tokens, tokens/s (bar: bytes read)."""

    def __init__(self, stream=None, bar: bool | None = None, every_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar  # logs and pipes: plain lines
        self.every_s = every_s
        self._progress = None
        self._t0 = self._last = time.perf_counter()

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def start(self, total_bytes: int | None) -> None:
        self._t0 = self._last = time.perf_counter()
        if not self.bar:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._t0 = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]tokenising"),
            BarColumn(),
            TextColumn("{task.fields[docs]} documents"),
            TextColumn("{task.fields[tokens]} tokens"),
            TextColumn("{task.fields[rate]} tokens/s"),
            TimeElapsedColumn(),
            console=Console(file=self.stream, force_terminal=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "prepare", total=total_bytes, docs="0", tokens="0", rate="-"
        )

    def update(self, *, documents, tokens, nbytes) -> None:
        now = time.perf_counter()
        dt = now - self._t0
        if self._progress is None:
            if not self.bar and now - self._last >= self.every_s:
                self._last = now
                self.note(
                    f"tokenising: {documents:,} documents, {tokens:,} tokens, "
                    f"{tokens / dt:,.0f} tokens/s"
                )
            return
        self._progress.update(
            self._task,
            completed=nbytes,
            docs=f"{documents:,}",
            tokens=f"{tokens:,}",
            rate=f"{tokens / dt:,.0f}" if dt > 0 else "-",
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ---------------------------------------------------------------------------- workers

_ENCODER: toks.Encoder | None = None
_DOC_CHARS = src.DOC_CHARS


def _init_worker(recipe: tuple, doc_chars: int, in_pool: bool = True) -> None:
    global _ENCODER, _DOC_CHARS
    if in_pool:  # Ctrl-C is the main process's to handle: it stops the pool and cleans up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = toks.Encoder(recipe)
    _DOC_CHARS = doc_chars


def _work(chunk):
    docs = src.chunk_documents(chunk, _DOC_CHARS)
    tokens, lengths = _ENCODER.encode(docs.texts)
    return tokens, lengths, docs.nbytes, docs.skipped


def _results(chunks, recipe: tuple, workers: int, doc_chars: int):
    """Results of ``_work`` for each chunk, in order, with at most 2 x workers in flight."""
    if workers == 1:
        _init_worker(recipe, doc_chars, in_pool=False)
        for chunk in chunks:
            yield _work(chunk)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(recipe, doc_chars)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_work, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()


# ---------------------------------------------------------------------------- the job


def _all_chunks(sources: list[src.Source]):
    return itertools.chain.from_iterable(s.chunks() for s in sources)


def _estimated_bytes(sources: list[src.Source]) -> int | None:
    sizes = [s.estimated_bytes() for s in sources]
    return None if any(x is None for x in sizes) else int(sum(sizes))


def bpe_sample(sources: list[src.Source], settings: PrepareSettings) -> list[str]:
    """The training documents the BPE is trained on: each kept with probability
    sample / corpus size (seeded), at most ``tokenizer_sample_bytes`` characters."""
    cap = settings.tokenizer_sample_bytes
    read_cap = None if settings.max_tokens is None else settings.max_tokens * MAX_BYTES_PER_TOKEN
    total = _estimated_bytes(sources)
    if total is not None and read_cap is not None:
        total = min(total, read_cap)
    p = 1.0 if not total else min(1.0, cap / total)
    texts: list[str] = []
    taken = read = doc_id = 0
    for chunk in _all_chunks(sources):
        docs = src.chunk_documents(chunk, settings.doc_chars)
        n = len(docs.texts)
        ids = np.arange(doc_id, doc_id + n, dtype=np.int64)
        doc_id += n
        keep = ~val_mask(ids, settings.val_fraction, settings.seed)
        if p < 1.0:
            keep &= uniform(settings.seed, ids, salt=1) < p
        for text, k in zip(docs.texts, keep):
            if k:
                texts.append(text)
                taken += len(text)
        read += docs.nbytes
        if taken >= cap or (read_cap is not None and read >= read_cap):
            break
    return texts


def prepare(settings: PrepareSettings, progress: NullProgress | None = None) -> dict:
    """Prepare the dataset; returns its meta.json content. BadInput (one line) for bad
    settings or sources; nothing is left at ``settings.out`` unless it completes."""
    progress = progress or NullProgress()
    settings.check()
    spec = toks.parse_tokenizer(settings.tokenizer)
    out = user_path(settings.out, "--out")
    tidy_leftovers(out, progress.note)
    check_output(out, settings.force)
    check_sources_outside(settings.sources, out)
    sources = src.open_sources(
        settings.sources,
        globs=settings.globs,
        text_field=settings.text_field,
        subset=settings.subset,
        split=settings.split,
        skip=output_paths(out),
    )
    check_writable(out)
    _open_hub(sources)
    workers = settings.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    recipe, tokenizer_json, sample_chars = _tokenizer(spec, sources, settings, progress)
    encoder = toks.Encoder(recipe)
    t_tok = time.perf_counter() - t0
    if spec.kind == "train":
        progress.note(
            f"tokenizer trained in {t_tok:.1f}s on {sample_chars:,} characters: "
            f"{encoder.vocab_size:,} tokens"
        )
    with DatasetWriter(out, encoder.dtype, force=settings.force) as writer:
        if tokenizer_json is not None:
            writer.write_file(TOKENIZER_FILE, tokenizer_json)
        t1 = time.perf_counter()
        counts = _write_documents(writer, sources, recipe, workers, settings, progress)
        seconds = time.perf_counter() - t1
        _check_splits(writer, counts.documents, settings)
        meta = {
            "tokenizer": {
                "name": spec.name,
                "kind": spec.kind,
                **encoder.describe(),
                "file": TOKENIZER_FILE if tokenizer_json is not None else None,
            },
            "vocab_size": encoder.vocab_size,
            "sources": [s.describe() for s in sources],
            "skipped": {"files": len(counts.skipped), "first": counts.skipped[:5]},
            "settings": _settings_record(settings, workers),
            "seed": settings.seed,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": {"tokenizer": round(t_tok, 3), "tokenize": round(seconds, 3)},
            "tokens_per_s": round(counts.tokens / seconds) if seconds > 0 else None,
            "bytes_read": counts.nbytes,
        }
        return writer.finish(meta)


def check_sources_outside(specs: list[str], out: Path) -> None:
    """BadInput for a file or folder named as a source that lies in ``out``: writing the
    output would replace it. (Folders that hold ``out`` are read without it.)"""
    inside = output_paths(out)
    for spec in specs:
        if not spec.startswith("hf:") and inside(user_path(spec, "SOURCE")):
            raise BadInput(
                f"{spec}: lies inside --out {out}, which the output replaces; choose another --out"
            )


def _open_hub(sources: list) -> None:
    """(Re)open the streamed hub sources (a tokenizer sample consumes their stream)."""
    for s in sources:
        if isinstance(s, src.HubSource):
            s.open()


def _tokenizer(spec, sources: list, settings: PrepareSettings, progress):
    """The encoder's recipe and, for a BPE trained on the corpus, its JSON and the
    number of characters it was trained on."""
    if spec.kind == "gpt2":
        toks.load_gpt2()  # fail now, in one line, when GPT-2's files cannot be had
        return ("gpt2",), None, 0
    if spec.kind == "bytes":
        return ("bytes",), None, 0
    progress.note(f"training a byte-level BPE of {spec.vocab:,} tokens on the corpus ...")
    sample = bpe_sample(sources, settings)
    if not sample:
        raise BadInput("no text to train the tokenizer on (every source is empty)")
    sample_chars = sum(len(t) for t in sample)
    tokenizer_json = toks.train_bpe(sample, spec.vocab)
    del sample
    _open_hub(sources)
    return ("train", tokenizer_json), tokenizer_json, sample_chars


@dataclass
class _Counts:
    documents: int = 0
    tokens: int = 0
    nbytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _write_documents(writer, sources, recipe, workers, settings, progress) -> _Counts:
    """Tokenise every source in parallel and write each document to its split, up to
    ``settings.max_tokens``."""
    c = _Counts()
    progress.start(_estimated_bytes(sources))
    try:
        for tokens, lengths, chunk_bytes, chunk_skipped in _results(
            _all_chunks(sources), recipe, workers, settings.doc_chars
        ):
            c.skipped.extend(chunk_skipped)
            c.nbytes += chunk_bytes
            tokens, lengths, stop = _cut_at_cap(tokens, lengths, c.tokens, settings.max_tokens)
            n = int(lengths.shape[0])
            if n:
                ids = np.arange(c.documents, c.documents + n, dtype=np.int64)
                is_val = val_mask(ids, settings.val_fraction, settings.seed)
                per_token = np.repeat(is_val, lengths)
                writer.add("train", tokens[~per_token], int((~is_val).sum()))
                writer.add("val", tokens[per_token], int(is_val.sum()))
                c.documents += n
                c.tokens += int(lengths.sum())
            progress.update(documents=c.documents, tokens=c.tokens, nbytes=c.nbytes)
            if stop or (settings.max_tokens is not None and c.tokens >= settings.max_tokens):
                break
    finally:
        progress.close()
    return c


def _cut_at_cap(tokens, lengths, total: int, cap: int | None):
    """Keep the documents that start before ``cap`` tokens; True when some were cut."""
    if cap is None or not len(lengths):
        return tokens, lengths, False
    starts = total + np.cumsum(lengths) - lengths
    keep = int(np.searchsorted(starts, cap, side="left"))
    if keep >= len(lengths):
        return tokens, lengths, False
    lengths = lengths[:keep]
    return tokens[: int(lengths.sum())], lengths, True


def _check_splits(writer: DatasetWriter, documents: int, settings: PrepareSettings) -> None:
    if documents == 0 or sum(writer.tokens.values()) == 0:
        raise BadInput("the sources hold no text (every document is empty or was skipped)")
    for split, name in (("val", "validation"), ("train", "training")):
        if writer.documents[split] == 0:
            raise BadInput(
                f"no document fell in the {name} split ({documents} documents at "
                f"--val-fraction {settings.val_fraction:g}): give more documents (long text "
                f"files are cut every {settings.doc_chars // 1024} KiB at blank lines), or "
                f"change --val-fraction or --seed"
            )


def _settings_record(settings: PrepareSettings, workers: int) -> dict:
    d = asdict(settings)
    d["out"] = str(settings.out)
    d.pop("force")
    d["workers"] = workers
    d["globs"] = list(settings.globs) or None
    return d


def read_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))


def stoppable(job):
    """Run `job` with SIGTERM treated like Ctrl-C: the temporary folder is removed."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        return job()
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupted_text(out: Path | str) -> str:
    """What an interrupted prepare left at `out`, and how to continue."""
    kept = (
        f"the dataset already at {out} is kept"
        if is_prepared(Path(out).expanduser())
        else f"nothing was written to {out}"
    )
    return f"{kept} (the partial output is removed); run the same command again to prepare it"


def shown(name: object) -> str:
    """A file name as text any stream can print: bytes that are not UTF-8 (which Python
    holds as lone surrogates) shown as \\xNN."""
    return str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def summary_text(out: str, meta: dict) -> str:
    """What `ra data prepare` prints when done: the tokenizer, counts, speed and hash."""
    out = shown(out)
    tok, docs = meta["tokens"], meta["documents"]
    total = tok["train"] + tok["val"]
    rate = meta.get("tokens_per_s")
    lines = [
        f"prepared {out}",
        f"  tokenizer      {meta['tokenizer']['name']} (vocabulary {meta['vocab_size']:,}, "
        f"{meta['dtype']})",
        f"  tokens         {total:,} (train {tok['train']:,}, val {tok['val']:,})",
        f"  documents      {docs['train'] + docs['val']:,} (train {docs['train']:,}, "
        f"val {docs['val']:,})",
        f"  speed          {rate:,} tokens/s over {meta['seconds']['tokenize']:.1f}s"
        if rate
        else "  speed          -",
        f"  content hash   {meta['content_hash']}",
    ]
    if meta["skipped"]["files"]:
        lines.append(
            f"  skipped        {meta['skipped']['files']} files (binary or not "
            f"UTF-8 text), e.g. {shown(meta['skipped']['first'][0])}"
        )
    lines.append(f"train on it: ra train --attn ra_v5 --data {out}")
    return "\n".join(lines)
