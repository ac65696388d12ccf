"""Bad input to the commands that train or measure, refused before anything is made: an
output among ra's own inputs (the checkpoints, the data, the ./ra.yaml later commands
read), a store file or TensorBoard folder left behind by a refusal, unbounded repeats,
digits that are not ASCII, empty values that used to read as "the default", a forced SDPA
backend the CPU has no kernel for, paths no file can have. CPU, tiny settings."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import make_db, one_line_error, ra_inprocess

from racli.errors import BadInput

TINY = [
    *("--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32"),
    *("--set", "model.block_size=32", "--set", "train.batch_size=4", "--device", "cpu"),
]
EXPERIMENT = ["experiment", "--attn", "baseline,ra_v5", "--seeds", "1", "--minutes", "0.01"]


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray file would land here
    monkeypatch.delenv("RA_DB", raising=False)


def test_an_output_among_ras_inputs_is_refused(tmp_path):
    """A checkpoint, a file of the data folder, or ./ra.yaml (which every later command
    would read as its config) given as an output."""
    make_db(tmp_path / "ra.db")
    ckpt = tmp_path / "ra_checkpoints" / "ra.db" / "run_2.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    cases = [
        (["runs", "export", "-o", "ra.yaml"], "the config file ra reads in this folder"),
        (["runs", "export", "-o", str(ckpt)], "lies in the store's checkpoint folder"),
        (["compare", "--plot", "ra_checkpoints/ra.db/c.png"], "checkpoint folder"),
        ([*EXPERIMENT, *TINY, "--report", "ra.yaml"], "the config file ra reads"),
        ([*EXPERIMENT, *TINY, "--data", "corpus", "--report", "corpus/meta.json"], "data folder"),
    ]
    for args, why in cases:
        assert why in one_line_error(ra_inprocess(*args, "--db", "ra.db")), args
    assert ckpt.read_bytes() == b"weights" and (data / "meta.json").read_text() == "{}"
    assert not (tmp_path / "ra.yaml").exists()


@pytest.mark.parametrize(
    "args",
    [
        [*EXPERIMENT, *TINY, "--data", "fx/nonexist"],
        ["train", "--attn", "baseline", "--steps", "2", *TINY, "--data", "fx/nonexist"],
        ["train", "--attn", "baseline", "--steps", "2", *TINY, "--tensorboard", "tb",
         "--data", "fx/nonexist"],
        [*EXPERIMENT, *TINY, "--tensorboard", "tb", "--data", "fx/nonexist"],
    ],
)  # fmt: skip
def test_a_refused_run_leaves_no_store_and_no_folder(tmp_path, args):
    one_line_error(ra_inprocess(*args, "--db", "new.db"))
    assert sorted(os.listdir(tmp_path)) == []


def test_the_tensorboard_folder_is_made_by_the_first_events_not_by_the_check(tmp_path):
    from racli.text.tensorboard import check_folder

    assert check_folder("tb/a/b") == Path("tb/a/b") and not (tmp_path / "tb").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="is a file, not a folder"):
        check_folder("f/tb")
    os.symlink(tmp_path / "nowhere", tmp_path / "l")
    with pytest.raises(BadInput, match="link to nothing"):
        check_folder("l/tb")


@pytest.mark.parametrize(
    "args, why",
    [
        (["bench", "--repeats", "99999999999999999999"], "less than or equal to 100000"),
        (["bench", "--warmup", "100001"], "less than or equal to 100000"),
        (["bench", "--tag", "x" * 300], "at most 255"),
        (["bench", "--tag", " "], "--tag is empty"),
        (["bench", "--device", ""], "--device is empty"),
        (["train", "--attn", "baseline", "--tag", ""], "--tag is empty"),
        (["train", "--attn", "baseline", "--steps", "1", "--device", " "], "--device is empty"),
        (["runs", "--config", ""], "--config is empty"),
        (["--config", "", "runs"], "--config is empty"),
        ([*EXPERIMENT, *TINY, "--tag", ""], "--tag is empty"),
        (["bench", "--tag", " a"], "begins or ends with white space"),
        (["train", "--attn", "baseline", "--steps", "1", "--tag", "a\t"], "white space"),
        ([*EXPERIMENT, *TINY, "--tag", "a "], "begins or ends with white space"),
        ([*EXPERIMENT, *TINY, "--tensorboard", ""], "give a folder"),
        ([*EXPERIMENT, "--devices", "\u00b2"], "--devices"),
    ],
)
def test_values_that_used_to_read_as_defaults_or_run_for_ever_are_one_line(tmp_path, args, why):
    res = ra_inprocess(*args, "--db", "new.db")
    assert res.exit_code == 2 and why in res.stderr, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr and not (tmp_path / "new.db").exists()


def test_a_forced_sdpa_backend_with_no_cpu_kernel_is_refused_before_recording(tmp_path):
    for backend in ("cudnn", "efficient"):
        err = one_line_error(
            ra_inprocess(
                "train", "--attn", "baseline", "--steps", "2", *TINY,
                "--set", f"train.sdpa_backend={backend}", "--db", "new.db",
            )
        )  # fmt: skip
        assert f"train.sdpa_backend={backend} has no kernel on the CPU" in err
    assert not (tmp_path / "new.db").exists()
    from racli.names import check_sdpa_backend_on_cpu

    for backend in ("auto", "math", "flash"):
        check_sdpa_backend_on_cpu(backend, 16)


def test_a_path_no_file_can_have_is_bad_input_at_the_boundary():
    from racli.cli import _path_input_error

    long = OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300)
    assert _path_input_error(long).endswith("File name too long")
    assert "~user" in _path_input_error(RuntimeError("Could not determine home directory."))
    assert _path_input_error(OSError(errno.EIO, "I/O error")) is None
    assert _path_input_error(RuntimeError("CUDA error")) is None


def test_a_report_name_that_is_not_utf8_is_refused_before_any_work():
    from racli.text.outputs import check_output_file

    with pytest.raises(BadInput, match=r"r\\xff.md: the name is not valid UTF-8"):
        check_output_file(os.fsdecode(b"r\xff.md"), "report")


def test_a_tag_with_white_space_at_its_edges_is_refused_and_the_old_tag_kept(tmp_path):
    make_db(tmp_path / "ra.db", [("train", "ra_v5", "finished", 1, "kept")])
    err = one_line_error(ra_inprocess("runs", "tag", "1", "kept ", "--db", tmp_path / "ra.db"))
    assert "begins or ends with white space" in err
    res = ra_inprocess("runs", "--tag", "kept", "--json", "--db", tmp_path / "ra.db")
    assert res.exit_code == 0 and '"kept"' in res.stdout
