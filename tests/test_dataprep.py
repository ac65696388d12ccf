"""Tests for `ra data prepare` (racli.dataprep), the prepared data in `ra train`, the `auto`
preset, the epoch estimate and --max-epochs. Small files made in each test, CPU only."""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import sqlite3
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, ra_inprocess

from racli.config import load_config, packaged_config_path
from racli.dataprep import sources as src
from racli.dataprep import tokenizers as toks
from racli.dataprep.identity import files_hash
from racli.dataprep.prepare import ConsoleProgress, PrepareSettings, parse_count, prepare
from racli.dataprep.split import val_mask
from racli.dataprep.writer import DatasetWriter
from racli.errors import BadInput

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
    "rho sigma tau upsilon phi chi psi omega"
).split()


def doc_text(i: int, words: int = 40) -> str:
    rng = np.random.default_rng(i)
    body = " ".join(WORDS[k] for k in rng.integers(0, len(WORDS), words))
    return f"document {i}: {body}.\n"


def make_settings(sources, out, **kw) -> PrepareSettings:
    kw.setdefault("tokenizer", "bytes")
    kw.setdefault("workers", 1)
    kw.setdefault("val_fraction", 0.2)
    return PrepareSettings(sources=[str(s) for s in sources], out=Path(out), **kw)


def read_split(out: Path, split: str, dtype=np.uint16) -> np.ndarray:
    return np.fromfile(out / f"{split}.bin", dtype=dtype)


def split_text(out: Path, split: str) -> str:
    return read_split(out, split).astype(np.uint8).tobytes().decode("utf-8")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A folder of 30 small .txt documents, a .md and a .py file."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(30):
        (d / ("sub" if i % 3 == 0 else "") / f"doc{i:02d}.txt").write_text(doc_text(i))
    (d / "readme.md").write_text("# readme\n" + doc_text(100))
    (d / "code.py").write_text("def f(x):\n    return x + 1\n")
    return d


# ---------------------------------------------------------------------------- sources


def test_text_file_is_cut_into_whole_documents(tmp_path):
    text = "".join(doc_text(i) + "\n" for i in range(400))  # ~120 kB, blank lines between
    path = tmp_path / "book.txt"
    path.write_text(text)
    out = tmp_path / "out"
    meta = prepare(make_settings([path], out, val_fraction=0.3, doc_chars=4096))
    total = meta["tokens"]["train"] + meta["tokens"]["val"]
    assert total == len(text.encode())  # bytes: every byte, nothing added
    assert meta["documents"]["val"] >= 1 and meta["documents"]["train"] >= 1
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(src.cut_text(text, 4096))
    # whole documents: each split is a run of complete "document N: ...\n\n" paragraphs
    for split in ("train", "val"):
        body = split_text(out, split)
        assert body.startswith("document ") and body.endswith(".\n\n")
    assert sorted((split_text(out, "train") + split_text(out, "val")).split("\n\n")) == sorted(
        text.split("\n\n")
    )
    assert meta["sources"][0]["kind"] == "text" and meta["dtype"] == "uint16"
    assert (out / "train.bin").stat().st_size == meta["tokens"]["train"] * 2


def test_folder_with_globs_skips_binary_files(corpus, tmp_path):
    (corpus / "blob.py").write_bytes(b"\x00\x01binary")
    (corpus / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (corpus / "empty.py").write_text("")
    for i in range(9):
        (corpus / "sub" / f"m{i}.py").write_text(f"X{i} = {i}\n")
    out = tmp_path / "out"
    meta = prepare(make_settings([corpus], out, globs=["**/*.py"], val_fraction=0.5))
    assert meta["sources"][0]["files"] == 13  # code, blob, latin1, empty, 9 modules
    assert meta["skipped"]["files"] == 2  # the binary and the non-UTF-8 file; empty is no loss
    assert meta["documents"]["train"] + meta["documents"]["val"] == 10
    assert "def f(x)" in split_text(out, "train") + split_text(out, "val")
    # default patterns: .txt and .md, in sorted order of their relative paths
    out2 = tmp_path / "out2"
    meta2 = prepare(make_settings([corpus], out2))
    assert meta2["sources"][0]["files"] == 31
    assert meta2["documents"]["train"] + meta2["documents"]["val"] == 31


def test_folder_of_one_python_file_cannot_split(corpus, tmp_path):
    res = ra_inprocess(
        "data",
        "prepare",
        corpus,
        "--glob",
        "**/*.py",
        "--out",
        tmp_path / "o",
        "--tokenizer",
        "bytes",
        "--workers",
        1,
    )
    assert "no document fell in the validation split" in one_line_error(res)
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.tmp-*"))


def test_jsonl_gz_with_text_field(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(50):
            fh.write(json.dumps({"id": i, "content": doc_text(i)}) + "\n")
            if i == 10:
                fh.write("\n")  # blank lines are allowed
    meta = prepare(make_settings([path], tmp_path / "out", text_field="content"))
    assert meta["documents"]["train"] + meta["documents"]["val"] == 50
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == sum(
        len(doc_text(i).encode()) for i in range(50)
    )
    assert meta["sources"][0] == {
        "kind": "jsonl",
        "path": str(path),
        "text_field": "content",
        "bytes": path.stat().st_size,
    }


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [doc_text(i) for i in range(40)], "n": list(range(40))}), path)
    meta = prepare(make_settings([path], tmp_path / "out"))
    assert meta["documents"]["train"] + meta["documents"]["val"] == 40
    assert meta["sources"][0]["rows"] == 40


def test_several_sources_in_order(corpus, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text(doc_text(7))
    meta = prepare(make_settings([one, corpus], tmp_path / "out"))
    assert [s["kind"] for s in meta["sources"]] == ["text", "folder"]
    assert meta["documents"]["train"] + meta["documents"]["val"] == 32


# ---------------------------------------------------------------------------- the hub


class _Stream:
    def __init__(self, records):
        self.records = records

    def __iter__(self):
        return iter(self.records)


def test_hub_source_through_a_stand_in(tmp_path, monkeypatch):
    asked = []

    def fake_load(name, subset, split):
        asked.append((name, subset, split))
        return _Stream([{"text": doc_text(i), "url": f"u{i}"} for i in range(60)])

    monkeypatch.setattr(src, "hf_load_dataset", fake_load)
    res = ra_inprocess(
        "data",
        "prepare",
        "hf:org/corpus",
        "--subset",
        "sample-10BT",
        "--split",
        "train",
        "--out",
        tmp_path / "hub",
        "--tokenizer",
        "bytes",
        "--workers",
        1,
        "--max-tokens",
        "2k",
        "--val-fraction",
        0.25,
    )
    assert res.exit_code == 0, res.stderr
    meta = json.loads((tmp_path / "hub" / "meta.json").read_text())
    assert asked[0] == ("org/corpus", "sample-10BT", "train")
    assert meta["sources"] == [
        {
            "kind": "hf",
            "name": "org/corpus",
            "subset": "sample-10BT",
            "split": "train",
            "text_field": "text",
        }
    ]
    total = meta["tokens"]["train"] + meta["tokens"]["val"]
    assert 2000 <= total < 2000 + len(doc_text(0).encode()) + 10  # stopped at --max-tokens


def test_hub_offline_is_one_line(tmp_path, monkeypatch):
    def offline(name, subset, split):
        raise ConnectionError(
            "Failed to resolve 'huggingface.co' ([Errno -3] Temporary "
            "failure in name resolution)\nmore lines"
        )

    monkeypatch.setattr(src, "hf_load_dataset", offline)
    res = ra_inprocess(
        "data", "prepare", "hf:org/corpus", "--out", tmp_path / "hub", "--tokenizer", "bytes"
    )
    err = one_line_error(res)
    assert "hf:org/corpus: cannot read it from the Hugging Face hub" in err
    assert "ConnectionError" in err and "local files" in err
    assert not (tmp_path / "hub").exists()


def test_hub_without_the_datasets_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    err = one_line_error(
        ra_inprocess("data", "prepare", "hf:x/y", "--out", tmp_path / "o", "--tokenizer", "bytes")
    )
    assert "pip install 'ra[hf]'" in err


# ---------------------------------------------------------------------------- tokenizers


@pytest.mark.slow
def test_trained_bpe_tokenizer(corpus, tmp_path):
    from tokenizers import Tokenizer

    out = tmp_path / "bpe"
    meta = prepare(make_settings([corpus], out, tokenizer="train:300", workers=2))
    assert (
        meta["tokenizer"]["name"] == "train:300" and meta["tokenizer"]["file"] == "tokenizer.json"
    )
    assert 257 <= meta["vocab_size"] <= 300 and meta["dtype"] == "uint16"
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eot = tok.token_to_id(toks.EOT_TEXT)
    assert meta["tokenizer"]["eot_token"] == eot
    docs = []
    for split in ("train", "val"):
        ids = read_split(out, split)
        assert int(ids.max()) < meta["vocab_size"]
        assert ids[-1] == eot and int((ids == eot).sum()) == meta["documents"][split]
        pieces = np.split(ids, np.nonzero(ids == eot)[0] + 1)[:-1]
        for piece in pieces:
            text = tok.decode(piece[:-1].tolist())
            assert tok.encode(text, add_special_tokens=False).ids == piece[:-1].tolist()
            docs.append(text)
    expected = [p.read_text() for p in corpus.rglob("*") if p.suffix in (".txt", ".md")]
    assert sorted(docs) == sorted(expected)
    # ra train reads it: vocabulary, tokenizer and hash from meta.json
    from racli.training.datasets import dataset_identity, load_dataset

    ds = load_dataset(out, val_fraction=0.1, block_size=8)
    assert ds.vocab_size == meta["vocab_size"] and ds.tokenizer == "train:300"
    assert dataset_identity(ds)["content_hash"] == meta["content_hash"]


def test_gpt2_offline_error_is_one_line(tmp_path, monkeypatch, corpus):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))

    def blocked(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    err = one_line_error(ra_inprocess("data", "prepare", corpus, "--out", tmp_path / "o"))
    assert "--tokenizer gpt2" in err and "TIKTOKEN_CACHE_DIR" in err
    assert str(tmp_path / "empty_cache") in err and "train:32768" in err and "bytes" in err
    assert not (tmp_path / "o").exists()


def test_gpt2_path_puts_end_of_text_between_documents(tmp_path, monkeypatch):
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    stand_in = tiktoken.Encoding(
        "gpt2-stand-in",
        pat_str=toks.GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={toks.EOT_TEXT: 256},
    )
    monkeypatch.setattr(toks, "load_gpt2", lambda: stand_in)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": doc_text(i)}) + "\n" for i in range(20)))
    meta = prepare(make_settings([path], tmp_path / "o", tokenizer="gpt2"))
    assert meta["tokenizer"]["eot_token"] == 256 and meta["vocab_size"] == 257
    ids = np.concatenate([read_split(tmp_path / "o", s) for s in ("train", "val")])
    assert int((ids == 256).sum()) == 20


@pytest.mark.parametrize(
    "text,reason",
    [
        ("train:abc", "whole number"),
        ("train:100", "between 257"),
        ("sentencepiece", "unknown"),
    ],
)
def test_bad_tokenizer_names(tmp_path, corpus, text, reason):
    err = one_line_error(
        ra_inprocess("data", "prepare", corpus, "--out", tmp_path / "o", "--tokenizer", text)
    )
    assert reason in err


def test_uint32_above_65536_tokens():
    assert toks.dtype_for(256) == np.uint16 and toks.dtype_for(65536) == np.uint16
    assert toks.dtype_for(65537) == np.uint32
    assert toks.parse_tokenizer("train:32k") == toks.TokenizerSpec("train", 32768)


# ---------------------------------------------------------------------------- split, hash


def test_validation_split_is_whole_documents_from_the_seed():
    ids = np.arange(20000)
    a = val_mask(ids, 0.1, seed=0)
    assert abs(a.mean() - 0.1) < 0.002
    assert np.array_equal(a, val_mask(ids, 0.1, seed=0))
    assert not np.array_equal(a, val_mask(ids, 0.1, seed=1))
    # one validation document per stratum of ten: spread across the corpus
    assert (a.reshape(-1, 10).sum(axis=1) == 1).all()
    # the mask of a position does not depend on the chunk it comes in
    assert np.array_equal(np.concatenate([val_mask(ids[:7], 0.1, 0), val_mask(ids[7:], 0.1, 0)]), a)


def test_content_hash_stable_and_specific(corpus, tmp_path):
    m1 = prepare(make_settings([corpus], tmp_path / "a"))
    m2 = prepare(make_settings([corpus], tmp_path / "b", workers=2))
    assert m1["content_hash"] == m2["content_hash"]  # two runs, any number of workers
    assert files_hash(tmp_path / "a", "uint16") == m1["content_hash"]  # the files' bytes
    m3 = prepare(make_settings([corpus], tmp_path / "c", seed=3))
    assert m3["content_hash"] != m1["content_hash"]  # another split
    (corpus / "doc05.txt").write_text(doc_text(5) + "one more line\n")
    m4 = prepare(make_settings([corpus], tmp_path / "d"))
    assert m4["content_hash"] != m1["content_hash"]  # other data


def test_max_tokens_stops_after_a_whole_document(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": doc_text(i)}) + "\n" for i in range(200)))
    sizes = np.cumsum([len(doc_text(i).encode()) for i in range(200)])
    meta = prepare(make_settings([path], tmp_path / "o", max_tokens=5000))
    total = meta["tokens"]["train"] + meta["tokens"]["val"]
    n = meta["documents"]["train"] + meta["documents"]["val"]
    assert total == sizes[n - 1] and sizes[n - 2] < 5000 <= total
    assert parse_count("120M", "--max-tokens") == 120_000_000
    assert parse_count("2.5k", "x") == 2500
    with pytest.raises(BadInput):
        parse_count("lots", "--max-tokens")


# ---------------------------------------------------------------------------- safety


def test_interrupted_prepare_leaves_nothing(corpus, tmp_path, monkeypatch):
    calls = []
    real_add = DatasetWriter.add

    def add_then_fail(self, split, tokens, documents):
        real_add(self, split, tokens, documents)
        calls.append(split)
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "add", add_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(make_settings([corpus], tmp_path / "out"))
    assert calls and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no temporary folder left


def test_killed_prepare_leaves_nothing_ra_train_accepts(tmp_path):
    from racli.training.datasets import DataError, load_dataset

    writer = DatasetWriter(tmp_path / "out", np.uint16)
    writer.add("train", np.arange(1000, dtype=np.uint16), 1)
    writer.add("val", np.arange(1000, dtype=np.uint16), 1)
    # the process dies here: neither finish() nor abort()
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError):
        load_dataset(writer.tmp, val_fraction=0.1, block_size=8)
    writer.abort()


def test_refuses_to_overwrite_without_force(corpus, tmp_path):
    out = tmp_path / "out"
    args = (
        "data",
        "prepare",
        corpus,
        "--out",
        out,
        "--tokenizer",
        "bytes",
        "--workers",
        1,
        "--val-fraction",
        0.2,
    )
    assert ra_inprocess(*args).exit_code == 0
    first = json.loads((out / "meta.json").read_text())
    assert "--force" in one_line_error(ra_inprocess(*args, "--seed", 1))
    assert json.loads((out / "meta.json").read_text()) == first  # untouched
    res = ra_inprocess(*args, "--seed", 1, "--force", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["seed"] == 1
    assert json.loads((out / "meta.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]
    # a folder that is not a prepared dataset is never replaced, even with --force
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    err = one_line_error(
        ra_inprocess("data", "prepare", corpus, "--out", other, "--tokenizer", "bytes", "--force")
    )
    assert "not a prepared dataset" in err and (other / "notes.txt").read_text() == "keep me"


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_force_refuses_an_output_that_holds_other_files(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(make_settings([corpus], out))
    (out / "doc01.txt").write_text("mine, named like a source")
    (out / "notes.md").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "k.txt").write_text("keep me too")
    before = files_in(out)
    with pytest.raises(BadInput, match="'doc01.txt', 'notes.md', 'sub'"):
        prepare(make_settings([corpus], out, force=True, seed=1))
    assert files_in(out) == before
    err = one_line_error(
        ra_inprocess("data", "prepare", corpus, "--out", out, "--tokenizer", "bytes", "--force")
    )
    assert "move them out or choose a new folder" in err
    assert files_in(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_force_replaces_the_files_ra_wrote(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(make_settings([corpus], out))
    (out / "tokenizer.json").write_text("{}")  # as a train:VOCAB prepare leaves it
    files_hash(out)  # `ra train` caches figures beside the data
    assert (out / ".ra_hash.json").is_file()
    meta = prepare(make_settings([corpus], out, force=True, seed=1))
    assert meta["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_a_source_inside_the_output_is_refused(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(make_settings([corpus], out))
    before = files_in(out)
    for source in (out, out / "meta.json"):
        with pytest.raises(BadInput, match="lies inside --out"):
            prepare(make_settings([corpus, source], out, force=True, globs=["**/*"]))
        assert files_in(out) == before
    err = one_line_error(
        ra_inprocess(
            "data", "prepare", out / "meta.json", "--out", out, "--tokenizer", "bytes", "--force"
        )
    )
    assert "lies inside --out" in err and files_in(out) == before


def test_the_output_is_never_read_as_input(corpus, tmp_path):
    out = corpus / "out"
    # the unfinished output of a prepare of `out` still running (this process) beside it
    running = corpus / f".out.tmp-{os.getpid()}@{socket.gethostname()}-abcd"
    running.mkdir()
    (running / "train.bin.part").write_text("tokens being written")
    first = prepare(make_settings([corpus], out, globs=["**/*"]))
    second = prepare(make_settings([corpus], out, globs=["**/*"], force=True))
    assert first["sources"][0]["files"] == second["sources"][0]["files"] == 32
    assert second["content_hash"] == first["content_hash"]
    assert second["skipped"] == first["skipped"]
    assert running.is_dir()


def _bad_sources(tmp: Path) -> dict:
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.md").write_text("  \n\n")
    (tmp / "nul.txt").write_bytes(b"abc\x00def")
    (tmp / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp / "nofield.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (tmp / "notjson.jsonl").write_text("this is not json\n")
    (tmp / "empty.jsonl").write_text("\n\n")
    (tmp / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp / "nomatch").mkdir()
    (tmp / "nomatch" / "a.rst").write_text("text")
    (tmp / "emptyfiles").mkdir()
    (tmp / "emptyfiles" / "a.txt").write_text("")
    cases = {
        "missing.txt": "no such file or folder",
        "empty.txt": "file is empty",
        "blank.md": "only white space",
        "nul.txt": "binary file",
        "latin1.txt": "not UTF-8",
        "nofield.jsonl": "no field 'text' (fields: body)",
        "notjson.jsonl": "not a JSON line",
        "empty.jsonl": "no records",
        "bad.jsonl.gz": "cannot read",
        "nomatch": "no files match",
        "emptyfiles": "are empty",
    }
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": ["x"]}), tmp / "nocol.parquet")
        pq.write_table(pa.table({"text": [1, 2]}), tmp / "ints.parquet")
        (tmp / "broken.parquet").write_bytes(b"PAR1 nonsense")
        cases.update(
            {
                "nocol.parquet": "no column 'text' (columns: body)",
                "ints.parquet": "not text",
                "broken.parquet": "not a readable Parquet",
            }
        )
    except ImportError:
        pass
    return cases


def test_every_bad_source_exits_2_with_one_line(tmp_path):
    cases = _bad_sources(tmp_path)
    for name, reason in cases.items():
        res = ra_inprocess(
            "data",
            "prepare",
            tmp_path / name,
            "--out",
            tmp_path / "o",
            "--tokenizer",
            "bytes",
            "--workers",
            1,
        )
        err = one_line_error(res)
        assert reason in err and name in err, (name, err)
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,reason",
    [
        (["--max-tokens", "many"], "--max-tokens"),
        (["--val-fraction", "0.9"], "--val-fraction"),
        (["--workers", "0"], "--workers"),
        (["--glob", "**/*.py"], "no SOURCE is a folder"),
        (["--subset", "sample-10BT"], "--subset chooses a Hub dataset's configuration"),
        (["--split", "validation"], "--split chooses a Hub dataset's split"),
        (["--text-field", "body"], "--text-field names a record's field"),
        (["--seed", "-1"], "--seed must be between 0 and 2^63 - 1"),
        (["--seed", "99999999999999999999"], "--seed must be between 0 and 2^63 - 1"),
    ],
)
def test_bad_options_exit_2(tmp_path, args, reason):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    err = one_line_error(
        ra_inprocess("data", "prepare", f, "--out", tmp_path / "o", "--tokenizer", "bytes", *args)
    )
    assert reason in err


@pytest.mark.parametrize("pattern", ["../**/*.txt", "sub/../../*.txt", "..\\*.txt"])
def test_a_glob_never_reads_outside_its_folder(tmp_path, pattern):
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("inside\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    err = one_line_error(
        ra_inprocess(
            "data",
            "prepare",
            folder,
            "--glob",
            pattern,
            "--out",
            tmp_path / "o",
            "--tokenizer",
            "bytes",
        )  # fmt: skip
    )
    assert "would read outside it" in err and not (tmp_path / "o").exists()


def test_progress_bar_shows_documents_tokens_and_speed(corpus, tmp_path):
    stream = io.StringIO()
    prepare(make_settings([corpus], tmp_path / "o"), ConsoleProgress(stream, bar=True))
    shown = stream.getvalue()
    assert "documents" in shown and "tokens/s" in shown and "31" in shown
    plain = io.StringIO()  # not a terminal: a plain line every `every_s` seconds
    prepare(make_settings([corpus], tmp_path / "p"), ConsoleProgress(plain, bar=False, every_s=0))
    assert "tokenising: " in plain.getvalue() and "tokens/s" in plain.getvalue()


def test_data_command_does_not_import_torch():
    from helpers import run_python

    res = run_python(
        "import sys\nfrom racli.cli import app\nimport racli.commands.data\n"
        "import racli.dataprep.prepare\nassert 'torch' not in sys.modules\n"
    )
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------- ra train

TINY = [
    "--set",
    "model.n_layer=1",
    "--set",
    "model.n_head=2",
    "--set",
    "model.n_embd=32",
    "--set",
    "model.block_size=16",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.eval_batches=2",
    "--set",
    "train.final_eval_batches=2",
    "--set",
    "train.log_interval=1",
]


def _metrics(db: Path, name: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT step, value FROM metrics WHERE name = ? ORDER BY step", (name,)
        ).fetchall()


@pytest.mark.slow
def test_ra_train_on_a_prepared_folder(corpus, tmp_path):
    out = tmp_path / "prep"
    meta = prepare(make_settings([corpus], out, tokenizer="train:300"))
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "ra_v5",
        "--steps",
        3,
        "--data",
        out,
        "--device",
        "cpu",
        "--no-compile",
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    with sqlite3.connect(db) as conn:
        config, config_hash = conn.execute("SELECT config, config_hash FROM runs").fetchone()
    data = json.loads(config)["data"]
    assert data == {
        "name": "prep",
        "vocab_size": meta["vocab_size"],
        "train_tokens": meta["tokens"]["train"],
        "val_tokens": meta["tokens"]["val"],
        "tokenizer": "train:300",
        "content_hash": meta["content_hash"],
    }
    assert json.loads(config)["model"]["vocab_size"] == meta["vocab_size"]
    shown = ra_inprocess("runs", "--db", db, "show", 1)
    assert shown.exit_code == 0, shown.stderr
    assert f"hash {meta['content_hash']}" in shown.stdout and "tokenizer train:300" in shown.stdout
    # another corpus: another config_hash, so the runs never pool
    other = prepare(make_settings([corpus], tmp_path / "prep2", seed=9))
    assert other["content_hash"] != meta["content_hash"]
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        3,
        "--data",
        tmp_path / "prep2",
        "--device",
        "cpu",
        "--no-compile",
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    with sqlite3.connect(db) as conn:
        hashes = [h for (h,) in conn.execute("SELECT config_hash FROM runs ORDER BY id")]
    assert hashes[0] == config_hash and hashes[1] != config_hash


@pytest.mark.slow
def test_epochs_warning_at_once_and_estimate_recorded(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)  # 1.8 kB
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        40,
        "--data",
        text,
        "--device",
        "cpu",
        "--no-compile",
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    # 40 steps x 4 x 16 tokens = 2,560 tokens over 1,620 training tokens: 1.6 passes
    lines = res.stderr.splitlines()
    note = next(line for line in lines if line.startswith("note: the budget trains on"))
    assert "2,560 tokens = 1.6 passes over the 1,620 training tokens of small.txt" in note
    assert "ra data prepare" in note and "--max-epochs" in note
    assert lines.index(note) < next(i for i, line in enumerate(lines) if "WARNING" in line)
    ((step, value),) = _metrics(db, "epochs_estimate")
    assert step == 0 and value == pytest.approx(2560 / 1620)


def test_minutes_budget_estimate_from_the_first_steps():
    from racli.training.budget import TIMING_STEPS, EpochBudget

    notes, metrics = [], []

    class Fake:
        pass

    t = Fake()
    t.spec = Fake()
    t.spec.steps, t.spec.budget_seconds = None, 60.0
    t.dataset = Fake()
    t.dataset.train_tokens, t.dataset.name = 1000, "d"
    t.config = {"data": {"name": "d"}}
    t.t = types.SimpleNamespace(max_epochs=None)
    t.rec = Fake()
    t.rec.metric = lambda step, name, value, secs: metrics.append((step, name, value))
    t.reporter = Fake()
    t.reporter.note = notes.append
    t.clock = Fake()
    t.clock.seconds = 2.0
    t._sync = lambda: None
    t.tokens_per_step = 100
    budget = EpochBudget(t)
    budget.start(t)
    assert not metrics  # a minutes budget is estimated once timed
    t.step, t.timed_steps, t.timed_tokens, t.tokens = TIMING_STEPS, TIMING_STEPS, 1000, 1100
    assert budget.after_step(t) is False
    # 500 tokens/s for the 58 s left, plus the 1,100 done: 30,100 tokens = 30.1 passes
    assert metrics == [(TIMING_STEPS, "epochs_estimate", pytest.approx(30.1))]
    assert "at the speed of the first steps" in notes[0] and "30.1 passes" in notes[0]
    budget.after_step(t)
    assert len(metrics) == 1  # once


@pytest.mark.slow
def test_max_epochs_stops_the_run_finished(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "ra_v5",
        "--steps",
        500,
        "--data",
        text,
        "--device",
        "cpu",
        "--no-compile",
        "--max-epochs",
        0.5,
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    assert "stopped at --max-epochs 0.5" in res.stderr
    assert "this run stops at --max-epochs 0.5" in res.stderr
    with sqlite3.connect(db) as conn:
        status, iterations, epochs, config = conn.execute(
            "SELECT status, iterations, epochs, config FROM runs"
        ).fetchone()
    # 0.5 x 1,620 tokens = 810 tokens = 13 steps of 64
    assert (status, iterations) == ("finished", 13) and 0.5 <= epochs < 0.55
    assert json.loads(config)["train"]["max_epochs"] == 0.5
    assert _metrics(db, "max_epochs_stop")[0][0] == 13


# ---------------------------------------------------------------------------- auto preset


def test_auto_preset_resolves_by_device(monkeypatch):
    from racli.training import spec as loop

    cfg = load_config(packaged_config_path())
    assert cfg.model.preset == "auto"
    assert cfg.resolve_preset(None, "cuda") == "gpt2" and cfg.resolve_preset(None, "cpu") == "tiny"
    assert cfg.resolve_preset("small", "cuda") == "small"
    spec = loop.spec_from_config(cfg, attn="baseline", steps=1, device="cpu")
    assert spec.preset == "tiny" and spec.model["n_layer"] == 2
    monkeypatch.setattr(loop, "resolve_device", lambda name: "cuda")
    spec = loop.spec_from_config(cfg, attn="baseline", steps=1, device="cuda", compile=False)
    assert spec.preset == "gpt2" and spec.model["n_embd"] == 768 and spec.model["n_layer"] == 12
    spec = loop.spec_from_config(
        cfg, attn="baseline", steps=1, preset="auto", device="cuda", compile=False
    )
    assert spec.preset == "gpt2"


def test_auto_preset_config_validation(tmp_path):
    from racli.config import ConfigError, config_from_dict

    whole = load_config(packaged_config_path()).to_dict()  # every key, model.preset auto
    tiny_only = {**whole, "models": {"tiny": whole["models"]["tiny"]}}
    cfg = config_from_dict(whole, "x.yaml")
    assert cfg.model_fields()["n_embd"] == 128
    assert cfg.model_fields(device_type="cuda")["n_embd"] == 768
    with pytest.raises(ConfigError, match="auto needs the presets gpt2, tiny"):
        config_from_dict(tiny_only, "x.yaml")
    with pytest.raises(ConfigError, match="valid: auto"):
        config_from_dict({**tiny_only, "model": {**whole["model"], "preset": "huge"}}, "x.yaml")
    with pytest.raises(ConfigError, match="train.max_epochs"):
        config_from_dict({**whole, "train": {**whole["train"], "max_epochs": 0}}, "x.yaml")


def test_train_model_auto_option(tmp_path):
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        1,
        "--model",
        "auto",
        "--device",
        "cpu",
        "--no-compile",
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    with sqlite3.connect(db) as conn:
        (preset,) = conn.execute("SELECT json_extract(config, '$.preset') FROM runs").fetchone()
    assert preset == "tiny"


@pytest.mark.slow
def test_bad_record_deep_in_a_file_stops_the_workers_with_one_line(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": doc_text(i)}) for i in range(30)]
    lines.append(json.dumps({"txt": "wrong field"}))
    path.write_text("\n".join(lines) + "\n")
    err = one_line_error(
        ra_inprocess(
            "data", "prepare", path, "--out", tmp_path / "o", "--tokenizer", "bytes", "--workers", 2
        )
    )
    assert f"{path}:31: no field 'text' (fields: txt)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_sigterm_stops_a_prepare_like_ctrl_c(corpus, tmp_path, monkeypatch):
    import os
    import signal

    from racli.dataprep.prepare import stoppable

    real_add = DatasetWriter.add

    def add_then_term(self, split, tokens, documents):
        real_add(self, split, tokens, documents)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DatasetWriter, "add", add_then_term)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        stoppable(lambda: prepare(make_settings([corpus], tmp_path / "out")))
    assert signal.getsignal(signal.SIGTERM) == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]
