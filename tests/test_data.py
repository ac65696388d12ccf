"""Tests for racli.training.datasets and batches: corpus, loaders, batch sampling, resume, eval batches."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import json
import pickle

import numpy as np
import pytest
import torch

from racli.training.batches import BatchSampler, epochs, eval_batches
from racli.training.datasets import DataError, Dataset, decode_bytes, encode_text, load_dataset

CORPUS_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"


@pytest.fixture(scope="module")
def builtin() -> Dataset:
    return load_dataset(None, val_fraction=0.1, block_size=64)


def _same_batches(a, b) -> bool:
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def _draw(sampler: BatchSampler, n: int):
    return [sampler.next() for _ in range(n)]


# ---------------------------------------------------------------------------- built-in corpus


def test_builtin_corpus_is_large_english_text(builtin):
    assert builtin.name == "builtin:shakespeare"
    assert builtin.vocab_size == 256
    assert builtin.train.dtype == np.uint8 and builtin.val.dtype == np.uint8
    total = builtin.train_tokens + builtin.val_tokens
    assert total >= 1_000_000
    text = bytes(builtin.train[:2_000_000]).decode("ascii")
    assert text.count("the ") > 10_000
    assert "To be, or not to be" in bytes(builtin.train).decode("ascii") + bytes(
        builtin.val
    ).decode("ascii")


def test_builtin_resource_matches_source_md():
    blob = (importlib.resources.files("racli") / "data/corpus.txt.gz").read_bytes()
    assert len(blob) < 3_000_000
    text = gzip.decompress(blob)
    assert hashlib.sha256(text).hexdigest() == CORPUS_SHA256
    assert b"\r" not in text
    source = (importlib.resources.files("racli") / "data/SOURCE.md").read_text()
    assert CORPUS_SHA256 in source


def test_builtin_aliases(builtin):
    for spec in ("builtin", "builtin:shakespeare"):
        ds = load_dataset(spec, val_fraction=0.1, block_size=64)
        assert np.array_equal(ds.train, builtin.train)
    with pytest.raises(DataError, match="unknown built-in"):
        load_dataset("builtin:tolstoy", 0.1, 64)


def test_split_sizes_follow_val_fraction(builtin):
    total = builtin.train_tokens + builtin.val_tokens
    assert builtin.val_tokens == round(total * 0.1)
    other = load_dataset(None, val_fraction=0.25, block_size=64)
    assert other.val_tokens == round(total * 0.25)
    assert other.train_tokens + other.val_tokens == total
    # the validation split is the tail of the corpus
    assert np.array_equal(other.val[-1000:], builtin.val[-1000:])
    assert np.array_equal(other.train, builtin.train[: other.train_tokens])


# ---------------------------------------------------------------------------- sampler


def test_batches_shape_dtype_and_shift(builtin):
    sampler = BatchSampler(builtin.train, batch_size=4, block_size=32, seed=0)
    x, y = sampler.next()
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    # each row of (x, y) is a real window of the token stream
    train = torch.from_numpy(builtin.train.astype(np.int64))
    row = torch.cat([x[0], y[0, -1:]])
    hits = (train.unfold(0, 33, 1) == row).all(dim=1)
    assert bool(hits.any())
    assert sampler.tokens_seen == 4 * 32


def test_same_seed_same_batches_different_seed_different(builtin):
    a = _draw(BatchSampler(builtin.train, 8, 64, seed=123), 5)
    b = _draw(BatchSampler(builtin.train, 8, 64, seed=123), 5)
    c = _draw(BatchSampler(builtin.train, 8, 64, seed=124), 5)
    assert _same_batches(a, b)
    assert not torch.equal(a[0][0], c[0][0])
    assert not _same_batches(a, c)


def test_iterator_protocol_matches_next(builtin):
    a = _draw(BatchSampler(builtin.train, 2, 16, seed=5), 3)
    it = iter(BatchSampler(builtin.train, 2, 16, seed=5))
    b = [next(it) for _ in range(3)]
    assert _same_batches(a, b)


@pytest.mark.parametrize("cut", [0, 1, 7])
def test_resume_mid_stream_gives_identical_continuation(builtin, cut):
    reference = _draw(BatchSampler(builtin.train, 4, 32, seed=9), cut + 5)

    first = BatchSampler(builtin.train, 4, 32, seed=9)
    _draw(first, cut)  # batch cut+1 is now prefetched
    state = first.state_dict()
    assert state["batches_drawn"] == cut
    # the state survives the checkpoint formats the trainer may use
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    state = json.loads(json.dumps(state))

    resumed = BatchSampler(builtin.train, 4, 32, seed=999)  # the seed is overridden by the state
    resumed.load_state_dict(state)
    assert resumed.tokens_seen == cut * 4 * 32
    assert _same_batches(_draw(resumed, 5), reference[cut:])
    # the original, prefetch and all, continues identically too
    assert _same_batches(_draw(first, 5), reference[cut:])


def test_resume_rejects_mismatched_shape(builtin):
    state = BatchSampler(builtin.train, 4, 32, seed=1).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(builtin.train, 8, 32, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="n_tokens"):
        BatchSampler(builtin.val, 4, 32, seed=1).load_state_dict(state)


def test_rank_sharding(builtin):
    ranks = [BatchSampler(builtin.train, 4, 32, seed=3, rank=r, world_size=2) for r in range(2)]
    b0, b1 = (_draw(s, 3) for s in ranks)
    for (x0, _), (x1, _) in zip(b0, b1):
        assert not torch.equal(x0, x1)
    # the two ranks together see what one process with the doubled batch sees
    whole = _draw(BatchSampler(builtin.train, 8, 32, seed=3), 3)
    for (x0, y0), (x1, y1), (xw, yw) in zip(b0, b1, whole):
        assert torch.equal(torch.cat([x0, x1]), xw)
        assert torch.equal(torch.cat([y0, y1]), yw)
    assert ranks[1].tokens_seen == 3 * 4 * 32
    assert ranks[1].global_tokens_seen == 2 * 3 * 4 * 32
    with pytest.raises(ValueError):
        BatchSampler(builtin.train, 4, 32, seed=3, rank=2, world_size=2)


def test_sampler_covers_whole_range():
    tokens = np.arange(40, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=64, block_size=8, seed=0)
    starts = set()
    for _ in range(10):
        x, y = sampler.next()
        assert int(y.max()) <= 39
        starts.update(x[:, 0].tolist())
    assert starts == set(range(40 - 8))


# ---------------------------------------------------------------------------- eval batches


def test_eval_batches_are_fixed(builtin):
    a = eval_batches(builtin.val, batch_size=4, block_size=32, n_batches=3, device="cpu")
    b = eval_batches(builtin.val, batch_size=4, block_size=32, n_batches=3, device="cpu")
    assert len(a) == 3 and _same_batches(a, b)
    for x, y in a:
        assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
    # a training sampler with any seed does not disturb them
    _draw(BatchSampler(builtin.val, 4, 32, seed=77), 2)
    assert _same_batches(a, eval_batches(builtin.val, 4, 32, 3, "cpu"))
    # windows span the split: first starts at 0, last ends at the final token
    assert torch.equal(a[0][0][0], torch.from_numpy(builtin.val[:32].astype(np.int64)))
    assert int(a[-1][1][-1, -1]) == int(builtin.val[-1])


def test_eval_batches_too_short():
    with pytest.raises(DataError):
        eval_batches(np.zeros(10, dtype=np.uint8), 2, 16, 1, "cpu")


def test_epochs():
    assert epochs(0, 1000) == 0.0
    assert epochs(500, 1000) == 0.5
    assert epochs(2500, 1000) == 2.5
    with pytest.raises(ValueError):
        epochs(10, 0)


# ---------------------------------------------------------------------------- other sources


def test_txt_file(tmp_path):
    text = "It was a bright cold day in April. " * 20
    path = tmp_path / "book.txt"
    path.write_text(text)
    ds = load_dataset(str(path), val_fraction=0.2, block_size=16)
    assert ds.name == str(path)
    assert ds.vocab_size == 256
    assert ds.train_tokens + ds.val_tokens == len(text)
    assert ds.val_tokens == round(len(text) * 0.2)
    assert bytes(ds.train) + bytes(ds.val) == text.encode()


def test_txt_dir_sorted_and_concatenated(tmp_path):
    (tmp_path / "b.txt").write_text("second file, " * 10 + "\n")
    (tmp_path / "a.txt").write_text("first file, " * 10)  # no final newline
    (tmp_path / "notes.md").write_text("ignored")
    ds = load_dataset(tmp_path, val_fraction=0.1, block_size=8)
    whole = bytes(ds.train) + bytes(ds.val)
    assert whole == ("first file, " * 10 + "\n" + "second file, " * 10 + "\n").encode()
    assert ds.vocab_size == 256


def test_utf8_text_round_trip(tmp_path):
    text = "naïve café — ünïcödé " * 10
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    ds = load_dataset(path, val_fraction=0.1, block_size=4)
    assert decode_bytes(np.concatenate([ds.train, ds.val])) == text
    assert decode_bytes(torch.from_numpy(encode_text(text))) == text


def _write_bin_dir(path, n_train=500, n_val=100, vocab=None):
    path.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    high = vocab or 50304
    rng.integers(0, high, n_train).astype(np.uint16).tofile(path / "train.bin")
    rng.integers(0, high, n_val).astype(np.uint16).tofile(path / "val.bin")
    if vocab is not None:
        with open(path / "meta.pkl", "wb") as fh:
            pickle.dump({"vocab_size": vocab, "itos": {}, "stoi": {}}, fh)
    return path


def test_nanogpt_bin_dir_with_meta(tmp_path):
    d = _write_bin_dir(tmp_path / "prep", vocab=65)
    ds = load_dataset(str(d), val_fraction=0.5, block_size=32)  # val_fraction unused for .bin
    assert ds.vocab_size == 65
    assert ds.train.dtype == np.uint16 and isinstance(ds.train, np.memmap)
    assert ds.train_tokens == 500 and ds.val_tokens == 100
    assert np.array_equal(ds.train, np.fromfile(d / "train.bin", dtype=np.uint16))
    x, y = BatchSampler(ds.train, 3, 32, seed=0).next()
    assert x.dtype == torch.int64 and int(x.max()) < 65
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_nanogpt_bin_dir_without_meta_defaults_vocab(tmp_path):
    ds = load_dataset(_write_bin_dir(tmp_path / "prep"), val_fraction=0.1, block_size=32)
    assert ds.vocab_size == 50304


# ---------------------------------------------------------------------------- errors


def _one_line_error(spec, val_fraction=0.1, block_size=16) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(spec, val_fraction, block_size)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    message = _one_line_error(str(missing))
    assert str(missing) in message and "no such file" in message


def test_a_sqlite_database_is_not_read_as_text(tmp_path):
    """`--data ra.db` (the results store) trained on its bytes; it is refused, and the
    store is only read."""
    import sqlite3

    db = tmp_path / "ra.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("row " * 50,)] * 200)
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(DataError, match="a SQLite database"):
        load_dataset(str(db), 0.1, 8)
    assert db.read_bytes() == before


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    message = _one_line_error(str(path))
    assert str(path) in message and "empty" in message


def test_too_short_data(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 100)
    message = _one_line_error(str(path), val_fraction=0.1, block_size=16)  # val = 10 tokens
    assert str(path) in message and "validation split has 10 tokens" in message
    message = _one_line_error(str(path), val_fraction=0.1, block_size=128)
    assert "train split" in message


def test_bad_directories(tmp_path):
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    (empty_dir / "readme.md").write_text("hi")
    assert "no .txt files" in _one_line_error(empty_dir)

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("")
    assert "empty" in _one_line_error(blank)

    half = tmp_path / "half"
    half.mkdir()
    np.arange(100, dtype=np.uint16).tofile(half / "train.bin")
    assert "no val.bin" in _one_line_error(half)

    short = _write_bin_dir(tmp_path / "short", n_train=500, n_val=10)
    assert "validation split has 10 tokens" in _one_line_error(short, block_size=16)


def test_bad_val_fraction(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc " * 100)
    assert "val_fraction" in _one_line_error(path, val_fraction=0.0)
    assert "val_fraction" in _one_line_error(path, val_fraction=1.0)


# ---------------------------------------------------------------------------- content hash


def test_every_dataset_carries_a_content_hash(builtin, tmp_path):
    from racli.training.datasets import dataset_identity

    assert len(builtin.content_hash) == 64 and builtin.tokenizer == "bytes"
    again = load_dataset("builtin", val_fraction=0.1, block_size=64)
    assert again.content_hash == builtin.content_hash
    assert (
        load_dataset(None, val_fraction=0.2, block_size=64).content_hash != builtin.content_hash
    )  # another split is other data
    ident = dataset_identity(builtin)
    assert ident["content_hash"] == builtin.content_hash and ident["name"] == "builtin:shakespeare"
    text = tmp_path / "t.txt"
    text.write_text("abc " * 100)
    a = load_dataset(text, 0.1, 8).content_hash
    text.write_text("abd " * 100)
    assert load_dataset(text, 0.1, 8).content_hash != a


def test_nanogpt_folder_hash_is_cached_beside_the_files(tmp_path):
    from racli.dataprep.identity import SIDECAR, arrays_hash

    d = _write_bin_dir(tmp_path / "prep", vocab=65)
    ds = load_dataset(d, val_fraction=0.1, block_size=8)
    assert ds.content_hash == arrays_hash(np.asarray(ds.train), np.asarray(ds.val))
    cache = json.loads((d / SIDECAR).read_text())
    assert set(cache) == {"train.bin", "val.bin"}
    assert (
        cache["train.bin"]["sha256"] == hashlib.sha256((d / "train.bin").read_bytes()).hexdigest()
    )
    # a cached digest is used while size and mtime match ...
    cache["val.bin"]["sha256"] = "0" * 64
    (d / SIDECAR).write_text(json.dumps(cache))
    assert load_dataset(d, 0.1, 8).content_hash != ds.content_hash
    # ... and a changed file is hashed again
    (np.arange(100, dtype=np.uint16) % 65)[::-1].tofile(d / "val.bin")  # ids below the vocabulary
    changed = load_dataset(d, 0.1, 8)
    assert changed.content_hash == arrays_hash(np.asarray(changed.train), np.asarray(changed.val))
    assert changed.content_hash != ds.content_hash


def _write_prepared(path, train, val, dtype="uint16", vocab=300, **extra):
    from racli.dataprep.identity import arrays_hash

    path.mkdir()
    train = np.asarray(train, dtype=dtype)
    val = np.asarray(val, dtype=dtype)
    train.tofile(path / "train.bin")
    val.tofile(path / "val.bin")
    meta = {
        "format": "ra-data/1",
        "tokenizer": {"name": "train:300"},
        "vocab_size": vocab,
        "dtype": dtype,
        "tokens": {"train": len(train), "val": len(val)},
        "content_hash": arrays_hash(train, val),
        **extra,
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_prepared_folder_uint32_and_meta(tmp_path):
    d = _write_prepared(
        tmp_path / "big", np.arange(500) * 200, np.arange(100) * 300, dtype="uint32", vocab=100_000
    )
    ds = load_dataset(d, val_fraction=0.1, block_size=16)
    assert ds.train.dtype == np.uint32 and ds.vocab_size == 100_000 and ds.tokenizer == "train:300"
    x, _ = BatchSampler(ds.train, 2, 16, seed=0).next()
    assert int(x.max()) > 65535
    assert ds.content_hash == json.loads((d / "meta.json").read_text())["content_hash"]


def test_prepared_folder_that_does_not_match_its_meta(tmp_path):
    d = _write_prepared(tmp_path / "p", np.arange(500), np.arange(100))
    with open(d / "train.bin", "ab") as fh:
        fh.write(b"\x00\x00")  # one token more than meta.json says
    assert "incomplete or altered" in _one_line_error(d)
    bad = _write_prepared(tmp_path / "q", np.arange(500), np.arange(100), vocab=70_000)
    assert "does not fit uint16" in _one_line_error(bad)
    (bad / "meta.json").write_text("{not json")
    assert "cannot read meta.json" in _one_line_error(bad)
