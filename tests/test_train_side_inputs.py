"""Bad input to the commands around training: `ra runs export-weights --out`, `ra train
--data` (pipes, devices), `ra data prepare` (SOURCE, --out, --workers, --tokenizer),
`ra sample` (--prompt, --temperature, --weights, --checkpoint) and paths no file can have.
Each is one line on stderr and exit 2, and changes nothing on disk. CPU, tiny models."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error, python_env, ra_inprocess, run_python

from racli.config import load_config, packaged_config_path
from racli.dataprep.prepare import PrepareSettings, prepare
from racli.dataprep.tokenizers import parse_tokenizer
from racli.errors import BadInput
from racli.store import checkpoints as ckpt_paths
from racli.store.engine import open_store

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_interval=2",
    "train.eval_batches=1",
    "train.final_eval_batches=1",
]
LONG = "x" * 300  # a name longer than any file system's 255 bytes
NO_USER = "~ra-no-such-user/x"


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative name, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_docs(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"d{i}.txt").write_text(f"document {i}: " + "alpha beta gamma delta " * 20)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store path, run id, its checkpoint, an export of it, a prepared dataset with its
    own tokenizer.json) after a 3-step train run on the built-in corpus."""
    from racli import training
    from racli.training import weights

    folder = tmp_path_factory.mktemp("side")
    db = str(folder / "ra.db")
    store = open_store(db)
    spec = training.spec_from_config(
        load_config(packaged_config_path()),
        attn="baseline",
        steps=3,
        seed=0,
        device="cpu",
        compile=False,
        overrides=TINY,
    )
    run_id = training.train(spec, store).run_id
    checkpoint = ckpt_paths.checkpoint_path(store.db, run_id)
    export = folder / "export"
    weights.export(weights.from_run(store, run_id), export)
    store.close()
    data = folder / "data"
    docs = write_docs(folder / "docs")
    prepare(PrepareSettings([str(docs)], data, tokenizer="train:260", workers=1))
    return {"db": db, "run": run_id, "checkpoint": checkpoint, "export": export, "data": data}


# ---------------------------------------------------------------------------- 1. export-weights


def test_export_into_another_dataset_is_refused_and_changes_nothing(trained):
    data = trained["data"]
    assert (data / "tokenizer.json").is_file()
    before = folder_state(data)
    res = ra_inprocess(
        "runs", "export-weights", trained["run"], "--out", data, "--db", trained["db"]
    )
    err = one_line_error(res)
    assert f"--out {data}: holds 'meta.json', 'train.bin', 'val.bin'" in err
    assert folder_state(data) == before  # byte for byte, no file added


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}'), "not an export"),
        (lambda d: (d / "model.safetensors").write_bytes(b"weights"), "not an export"),
        (lambda d: (d / "notes.txt").write_text("mine"), "holds 'notes.txt'"),
        (lambda d: (d / "sub").mkdir(), "holds 'sub'"),
    ],
)
def test_export_refuses_a_folder_of_files_it_did_not_write(trained, tmp_path, make, message):
    out = tmp_path / "out"
    out.mkdir()
    make(out)
    before = sorted(p.name for p in out.iterdir()), folder_state(out)
    res = ra_inprocess(
        "runs", "export-weights", trained["run"], "--out", out, "--db", trained["db"]
    )
    assert message in one_line_error(res)
    assert (sorted(p.name for p in out.iterdir()), folder_state(out)) == before


def test_export_replaces_an_earlier_export(trained, tmp_path):
    out = tmp_path / "w"
    for _ in range(2):
        res = ra_inprocess(
            "runs", "export-weights", trained["run"], "--out", out, "--db", trained["db"]
        )
        assert res.exit_code == 0, res.output
    (out / "tokenizer.json").write_text("{}")  # an earlier export's, of a trained BPE
    res = ra_inprocess(
        "runs", "export-weights", trained["run"], "--out", out, "--db", trained["db"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("out", ["", "  "])
def test_export_refuses_an_empty_out(trained, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    res = ra_inprocess(
        "runs", "export-weights", trained["run"], "--out", out, "--db", trained["db"]
    )
    assert "--out is empty" in one_line_error(res)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- 2. pipes and devices


def _load_in_a_child(data: Path) -> str:
    """What load_dataset says of `data`, in a child process (a hang fails, not waits)."""
    code = (
        "import sys\n"
        "from racli.training.datasets import DataError, load_dataset\n"
        "try:\n"
        "    d = load_dataset(sys.argv[1], 0.1, 8)\n"
        "    print('loaded', d.vocab_size)\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
    )
    res = run_python(code, data, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _nanogpt(folder: Path) -> Path:
    import numpy as np

    folder.mkdir()
    for split in ("train", "val"):
        (np.arange(200, dtype=np.uint16) % 50).tofile(folder / f"{split}.bin")
    return folder


def _prepared_copy(trained, folder: Path) -> Path:
    folder.mkdir()
    for p in trained["data"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda t, d: os.mkfifo(d / "fifo") or d / "fifo", "fifo"),
        (lambda t, d: os.mkfifo(_nanogpt(d / "n") / "meta.pkl") or d / "n", "n/meta.pkl"),
        (lambda t, d: _swap_fifo(_prepared_copy(t, d / "p"), "train.bin"), "p/train.bin"),
        (lambda t, d: _swap_fifo(_prepared_copy(t, d / "p"), "val.bin"), "p/val.bin"),
        (lambda t, d: _swap_fifo(_prepared_copy(t, d / "p"), "meta.json"), "p/meta.json"),
        (lambda t, d: Path("/dev/zero"), "/dev/zero"),
    ],
)
def test_data_that_is_not_a_regular_file_is_refused_without_reading(trained, tmp_path, make, named):
    data = make(trained, tmp_path)
    said = _load_in_a_child(data)
    assert said.endswith(f"{named} is not a regular file (a device, pipe or socket)"), said


def _swap_fifo(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    os.mkfifo(folder / name)
    return folder


def test_a_pipe_as_the_hash_cache_is_no_cache(tmp_path):
    data = _nanogpt(tmp_path / "n")
    os.mkfifo(data / ".ra_hash.json")
    assert _load_in_a_child(data) == "loaded 50304"


def _resumable_run(tmp_path: Path) -> tuple[Path, Path, int]:
    """(store, data folder, run id) of a run on a folder of documents that can be resumed
    (marked interrupted with budget left)."""
    db = tmp_path / "ra.db"
    data = write_docs(tmp_path / "docs", 4)
    tiny = [a for o in TINY for a in ("--set", o)]
    res = ra_inprocess(
        "train", "--db", db, "--attn", "baseline", "--steps", 2, "--device", "cpu",
        "--data", data, *tiny, "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with sqlite3.connect(db) as conn:  # resumable: it stopped early
        conn.execute("UPDATE runs SET status='interrupted'")
        conn.execute("UPDATE runs SET config=json_set(config, '$.budget.steps', 100)")
    return db, data, json.loads(res.stdout)["run_id"]


def test_a_resume_whose_data_became_a_pipe_is_one_line(tmp_path):
    db, data, run_id = _resumable_run(tmp_path)
    for p in data.iterdir():
        p.unlink()
    data.rmdir()
    os.mkfifo(data)
    proc = subprocess.run(
        [sys.executable, "-m", "racli", "train", "--db", str(db), "--resume", str(run_id)],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_env(),
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip() == f"ra: error: {data} is not a regular file (a device, pipe or socket)"
    )


def test_a_resume_whose_data_is_gone_leaves_an_older_store_at_its_schema(tmp_path):
    """The data is looked for before an older store is migrated: the refusal changes
    nothing in it, its revision included."""
    import shutil

    from racli.store import migrate as store_migrate

    db, data, run_id = _resumable_run(tmp_path)
    s = open_store(str(db), migrate=False)
    try:
        store_migrate.downgrade(s.engine, "0007")
    finally:
        s.close()
    with sqlite3.connect(db) as conn:
        before = list(conn.iterdump())
    shutil.rmtree(data)
    err = one_line_error(ra_inprocess("train", "--db", db, "--resume", run_id))
    assert str(data) in err, err
    with sqlite3.connect(db) as conn:
        assert list(conn.iterdump()) == before
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0007",)]


# ---------------------------------------------------------------------------- 3. --workers


def test_workers_are_bounded_before_any_pool_starts(tmp_path):
    from racli.dataprep.prepare import max_workers

    settings = PrepareSettings([str(tmp_path)], tmp_path / "o", workers=100_000)
    with pytest.raises(BadInput, match=rf"--workers must be at most {max_workers()} \(4 per core"):
        settings.check()
    PrepareSettings([str(tmp_path)], tmp_path / "o", workers=max_workers()).check()


# ---------------------------------------------------------------------------- 4. empty names


@pytest.mark.parametrize(
    "args, message",
    [
        (["", "--out", "o"], "SOURCE is empty"),
        (["  ", "--out", "o"], "SOURCE is empty"),
        (["docs", "--out", ""], "--out is empty"),
        (["docs", "--out", "  "], "--out is empty"),
    ],
)
def test_prepare_refuses_empty_source_and_out(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_docs(tmp_path / "docs", 3)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = ra_inprocess("data", "prepare", *args, "--tokenizer", "bytes", "--workers", 1)
    assert message in one_line_error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "sources, message",
    [
        (["docs", "docs"], "is given twice"),
        (["docs", "./docs/"], "is given twice"),
        (["docs", "docs/d0.txt"], "overlaps"),
        (["docs/d0.txt", "docs"], "overlaps"),
        (["hf:x", "hf:x"], "is given twice"),
    ],
)
def test_a_source_named_twice_is_refused(tmp_path, monkeypatch, sources, message):
    """Its documents would be split twice, into both train and validation: the validation
    loss would then measure memorisation."""
    monkeypatch.chdir(tmp_path)
    write_docs(tmp_path / "docs", 3)
    res = ra_inprocess("data", "prepare", *sources, "--out", "o", "--tokenizer", "bytes")
    err = one_line_error(res)
    assert message in err and "both the train and the validation split" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- 5, 6. sample settings


def test_a_prompt_that_is_not_utf8_is_one_line(trained):
    res = ra_inprocess("sample", "--checkpoint", trained["checkpoint"], "--prompt", "a\udcffb")
    err = one_line_error(res)
    assert "--prompt is not valid UTF-8 text (byte 0xff at character 2)" in err


@pytest.mark.parametrize("temperature", ["1e-40", "1e-7", "inf", "-inf", "nan", "-0.5"])
def test_temperature_is_zero_or_finite_and_not_tiny(trained, temperature):
    res = ra_inprocess(
        "sample", "--checkpoint", trained["checkpoint"], "--temperature", temperature
    )
    err = one_line_error(res)
    assert "--temperature must be 0 (greedy) or a finite number of at least 1e-06" in err


@pytest.mark.parametrize("temperature", ["0", "1e-6"])
def test_temperature_zero_and_the_smallest_sample(trained, temperature):
    args = ["--temperature", temperature, "--tokens", 4, "--device", "cpu"]
    res = ra_inprocess("sample", "--checkpoint", trained["checkpoint"], *args)
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------- 7. weights, checkpoints


def _edited_export(trained, folder: Path, edit) -> Path:
    folder.mkdir()
    for p in trained["export"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    conf = json.loads((folder / "config.json").read_text())
    edit(conf)
    (folder / "config.json").write_text(json.dumps(conf))
    return folder


def _set_model(key, value):
    return lambda c: c["model"].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("model"), "config.json has no 'model' key"),
        (lambda c: c.pop("attn"), "config.json has no 'attn' key"),
        (lambda c: c.__setitem__("model", "tiny"), "config.json's 'model' is 'tiny'"),
        (lambda c: c.__setitem__("tokenizer", "bytes"), "config.json's 'tokenizer' is"),
        (lambda c: c["tokenizer"].__setitem__("file", "../x"), "tokenizer file is '../x'"),
        (_set_model("n_embd", 64), "transformer.wte.weight is 256x32, the config's vocab_size"),
        (_set_model("vocab_size", 500), "the config's vocab_size x n_embd is 500x32"),
        (_set_model("block_size", 10**30), "the config's block_size x n_embd is 10000"),
        (_set_model("block_size", 1e30), "block_size must be a positive integer"),
        (_set_model("n_layer", 3), "they hold 1 layer, the config's n_layer is 3"),
        (_set_model("bias", True), "the weights do not match the config"),
        (_set_model("ra_rank", "x"), "not a model ra can build"),
    ],
)
def test_a_bad_config_json_is_one_line_naming_the_folder(trained, tmp_path, edit, message):
    folder = _edited_export(trained, tmp_path / "w", edit)
    err = one_line_error(ra_inprocess("sample", "--weights", folder, "--device", "cpu"))
    assert err.startswith(f"ra: error: {folder}") and message in err, err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t, d: _write(d / "t.txt", b"hello\n"), "not a PyTorch checkpoint file"),
        (lambda t, d: _write(d / "e.pt", b""), "the file is empty or cut short"),
        (
            lambda t, d: _write(d / "c.pt", t["checkpoint"].read_bytes()[:1000]),
            "the file is damaged or incomplete (PytorchStreamReader",
        ),
        (
            lambda t, d: _write(d / "p.pt", pickle.dumps([1, 2], protocol=4)),
            "refused by the safe (weights-only) loader",
        ),
        (lambda t, d: os.mkfifo(d / "f.pt") or d / "f.pt", "is not a regular file"),
    ],
)
def test_an_unreadable_checkpoint_is_one_line(trained, tmp_path, make, message):
    path = make(trained, tmp_path)
    err = one_line_error(ra_inprocess("sample", "--checkpoint", path, "--device", "cpu"))
    assert f"{path}" in err and message in err, err


def test_export_of_a_run_whose_checkpoint_is_damaged_is_one_line(trained, tmp_path):
    path = trained["checkpoint"]
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 2])
        res = ra_inprocess(
            "runs", "export-weights", trained["run"], "--out", tmp_path / "w", "--db", trained["db"]
        )
        err = one_line_error(res)
    finally:
        path.write_bytes(good)
    assert f"cannot read checkpoint {path}: the file is damaged or incomplete" in err
    assert "weights_only" not in err and not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------- 8. --tokenizer


@pytest.mark.parametrize("name", ["train:²", "train:3²k", "train:٣٠٠"])
def test_tokenizer_vocab_must_be_ascii_digits(tmp_path, name):
    with pytest.raises(BadInput, match="train:VOCAB takes a whole number"):
        parse_tokenizer(name)
    res = ra_inprocess("data", "prepare", tmp_path, "--out", tmp_path / "o", "--tokenizer", name)
    assert "train:VOCAB takes a whole number" in one_line_error(res)


# ---------------------------------------------------------------------------- 9. paths


def test_user_path_refuses_names_no_file_can_have(tmp_path):
    from racli.dataprep.paths import user_path

    assert user_path("~/x") == Path.home() / "x"
    with pytest.raises(BadInput, match=r"^--out ~ra-no-such-user/x: ~ra-no-such-user names no"):
        user_path(NO_USER, "--out")
    with pytest.raises(BadInput, match=r"a name in it is 300 bytes long, more than the file"):
        user_path(tmp_path / "missing" / LONG)
    with pytest.raises(BadInput, match="the path is .* bytes long"):
        user_path("/".join(["y" * 200] * 30))
    with pytest.raises(BadInput, match="^the path is empty"):
        user_path(" ")


def _path_cases(trained, tmp_path, bad):
    docs = str(write_docs(tmp_path / "docs", 3))
    db = ["--db", trained["db"]]
    train = ["train", *db, "--attn", "baseline", "--steps", 1, "--device", "cpu"]
    return [
        [*train, "--data", bad],
        ["sample", "--checkpoint", bad],
        ["sample", "--weights", bad],
        ["runs", "export-weights", trained["run"], "--out", bad, *db],
        ["data", "prepare", bad, "--out", tmp_path / "o", "--tokenizer", "bytes"],
        ["data", "prepare", docs, "--out", bad, "--tokenizer", "bytes"],
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        (LONG, "a name in it is 300 bytes long"),
        (f"sub/{LONG}/x", "a name in it is 300 bytes long"),
        (NO_USER, "~ra-no-such-user names no user with a home folder"),
    ],
    ids=["long-name", "long-name-inside", "no-such-user"],
)
def test_paths_no_file_can_have_are_one_line(trained, tmp_path, monkeypatch, bad, message):
    monkeypatch.chdir(tmp_path)
    for args in _path_cases(trained, tmp_path, bad):
        err = one_line_error(ra_inprocess(*args))
        assert message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]
