"""`ra sample` and `ra runs export-weights` (racli.training.sampling / weights,
racli.dataprep.codec, GPT.generate), on the CPU with tiny models."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, record_run
from typer.testing import CliRunner

from racli import training
from racli.cli import app
from racli.config import load_config, packaged_config_path
from racli.store import checkpoints as ckpt_paths
from racli.store.engine import open_store
from racli.store.queries import get_run
from racli.training import weights
from racli_models import GPT, GPTConfig, attention
from racli_models.config import ATTENTION_NAMES

BLOCK = 32
TINY = [
    "model.n_layer=2",
    "model.n_head=4",
    "model.n_embd=32",
    f"model.block_size={BLOCK}",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.eval_interval=10",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=5",
]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def train_run(store, attn: str, seed: int, data=None, steps: int = 10) -> int:
    cfg = load_config(packaged_config_path())
    spec = training.spec_from_config(
        cfg, attn=attn, steps=steps, seed=seed, device="cpu", compile=False, data=data,
        overrides=TINY,
    )  # fmt: skip
    return training.train(spec, store).run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A store with train runs 1 (ra_v5, seed 0) and 2 (baseline, seed 1), each with its
    checkpoint, a bench run 3 and a train run 4 without checkpoint."""
    folder = tmp_path_factory.mktemp("sample")
    db = str(folder / "ra.db")
    store = open_store(db)
    train_run(store, "ra_v5", 0)
    train_run(store, "baseline", 1)
    record_run(store, kind="bench")
    record_run(store, kind="train")
    store.close()
    return db


def sample_json(db, *args) -> dict:
    r = invoke("sample", "--db", db, "--tokens", 12, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# ---------------------------------------------------------------------------- the model


@pytest.mark.parametrize("attn", ATTENTION_NAMES)
def test_generate_every_variant_past_the_block_size(attn):
    model = GPT(GPTConfig(attn=attn, n_layer=1, n_head=2, n_embd=16, block_size=8), seed=0)
    model.eval()
    idx = torch.tensor([[1, 2, 3]])
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    out = model.generate(idx, 12, temperature=1.0, top_k=20, generator=gen(5))
    assert out.shape == (1, 15) and out[0, :3].tolist() == [1, 2, 3]
    assert int(out.max()) < 256
    again = model.generate(idx, 12, temperature=1.0, top_k=20, generator=gen(5))
    assert torch.equal(out, again)
    other = model.generate(idx, 12, temperature=1.0, top_k=20, generator=gen(6))
    assert not torch.equal(out, other)


def test_generate_greedy_and_top_1_take_the_likeliest_token():
    model = GPT(GPTConfig(attn="baseline", n_layer=1, n_head=2, n_embd=16, block_size=8), seed=0)
    model.eval()
    idx = torch.tensor([[7]])
    greedy = model.generate(idx, 10, temperature=0.0)
    top1 = model.generate(idx, 10, temperature=1.0, top_k=1)
    assert torch.equal(greedy, top1)
    logits, _ = model(greedy[:, -9:-1])  # the last token: the likeliest after its context
    assert int(greedy[0, -1]) == int(logits[0, -1].argmax())


def test_generate_composes_the_ra_weight_once_per_layer(monkeypatch):
    model = GPT(GPTConfig(attn="ra_v5", n_layer=2, n_head=2, n_embd=16, block_size=8), seed=0)
    model.eval()
    calls = []
    monkeypatch.setattr(attention, "REUSE", False)  # only composed_once() may reuse W_f
    for block in model.transformer.h:
        inner = block.attn.folded_weight

        def counted(inner=inner):
            calls.append(1)
            return inner()

        block.attn.folded_weight = counted
    model.generate(torch.tensor([[1, 2]]), 6, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2  # once per layer for the 6 forwards


# ---------------------------------------------------------------------------- ra sample


def test_sample_is_deterministic_per_seed_and_differs_across_runs(runs):
    a = sample_json(runs, "--run", 1, "--seed", 3, "--prompt", "ROMEO:")
    again = sample_json(runs, "--run", 1, "--seed", 3, "--prompt", "ROMEO:")
    other_seed = sample_json(runs, "--run", 1, "--seed", 4, "--prompt", "ROMEO:")
    other_run = sample_json(runs, "--run", 2, "--seed", 3, "--prompt", "ROMEO:")
    text = a["samples"][0]["text"]
    assert text == again["samples"][0]["text"] and text.startswith("ROMEO:")
    assert len(a["samples"][0]["ids"]) == 12 and a["prompt_ids"] == list(b"ROMEO:")
    assert text != other_seed["samples"][0]["text"]
    assert text != other_run["samples"][0]["text"]
    assert a["run_id"] == 1 and a["attn"] == "ra_v5" and a["tokenizer"] == "bytes"
    # sample i does not depend on how many are drawn; the text is what the ids decode to
    two = sample_json(runs, "--run", 1, "--seed", 3, "--prompt", "ROMEO:", "--samples", 2)
    assert two["samples"][0] == a["samples"][0] and len(two["samples"]) == 2
    plain = invoke("sample", "--db", runs, "--run", 1, "--seed", 3, "--tokens", 12,
                   "--prompt", "ROMEO:")  # fmt: skip
    assert plain.exit_code == 0 and plain.stdout.rstrip("\n") == text.rstrip("\n")
    # the checkpoint file itself
    path = ckpt_paths.checkpoint_path(runs, 1)
    by_file = sample_json(runs, "--checkpoint", path, "--seed", 3, "--prompt", "ROMEO:")
    assert by_file["samples"] == a["samples"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", 99], "no run with id 99"),
        (["--run", 3], "run 3 is a bench run"),
        (["--run", 4], "run 4 has no checkpoint"),
        ([], "give one of --run N, --checkpoint FILE, --weights DIR"),
        (["--run", 1, "--weights", "x"], "not --run and --weights"),
        (["--run", 1, "--tokens", 0], "--tokens must be at least 1"),
        (["--run", 1, "--temperature", -0.5], "--temperature must be 0"),
        (["--run", 1, "--temperature", "nan"], "--temperature must be 0"),
        (["--run", 1, "--top-k", -2], "--top-k must be at least 1"),
        (["--run", 1, "--samples", 0], "--samples must be at least 1"),
        (["--run", 1, "--device", "tpu"], "unknown device"),
        (["--checkpoint", "/nonexistent/run_1.pt"], "no checkpoint file"),
        (["--weights", "/nonexistent"], "is not an export"),
    ],
)
def test_sample_bad_input_exits_2(runs, args, message):
    r = invoke("sample", "--db", runs, *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokens", 99999999999999999999], "--tokens must be at most 1,000,000"),
        (["--tokens", 1_000_001], "--tokens must be at most 1,000,000, got 1000001"),
        (["--samples", 99999999999999999999], "--samples must be at most 1,000"),
    ],
)
def test_sample_counts_past_their_limit_are_bad_input_before_loading(tmp_path, args, message):
    db = tmp_path / "ra.db"
    r = invoke("sample", "--db", db, "--run", 1, *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"ra: error: {message}") and r.stderr.count("\n") == 1
    assert not db.exists()


# ---------------------------------------------------------------------------- export-weights


@pytest.mark.slow
@pytest.mark.parametrize("run_id", [1, 2])
def test_export_weights_round_trip_weights_logits_and_samples(runs, tmp_path, run_id):
    out = tmp_path / "w"
    r = invoke("runs", "export-weights", run_id, "--out", out, "--db", runs)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    conf = json.loads((out / "config.json").read_text())
    store = open_store(runs, readonly=True)
    original = weights.from_run(store, run_id)
    uuid = get_run(store, run_id).uuid
    store.close()
    assert conf["attn"] == original.attn and conf["run_id"] == run_id and conf["run_uuid"] == uuid
    assert conf["model"]["n_embd"] == 32 and conf["vocab_size"] == 256
    assert conf["tokenizer"] == {"name": "bytes", "file": None}
    assert len(conf["data_hash"]) == 64
    loaded = weights.from_folder(out)
    a, b = original.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    x = torch.randint(0, 256, (2, BLOCK))
    with torch.no_grad():
        assert torch.equal(original.model(x)[0], loaded.model(x)[0])
    by_run = sample_json(runs, "--run", run_id, "--seed", 1)
    by_weights = sample_json(runs, "--weights", out, "--seed", 1)
    assert by_weights["samples"] == by_run["samples"] and by_weights["run_uuid"] == uuid
    # names: nanoGPT's for what the models share
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} < names
    assert "transformer.h.1.mlp.c_fc.weight" in names and "lm_head.weight" not in names
    attn_names = {n.split(".attn.")[1] for n in names if ".attn." in n}
    expected = {
        "ra_v5": {"W_q", "W_k", "W_v", "P", "w_std", "w_rec", "c_proj.weight"},
        "baseline": {"c_attn.weight", "c_proj.weight"},
    }[original.attn]
    assert attn_names == expected


@pytest.mark.slow
def test_failed_export_leaves_the_previous_one(runs, tmp_path, monkeypatch):
    import safetensors.torch as st

    out = tmp_path / "w"
    assert invoke("runs", "export-weights", 1, "--out", out, "--db", runs).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_written(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", half_written)
    r = invoke("runs", "export-weights", 2, "--out", out, "--db", runs)
    assert r.exit_code == 2 and "No space left on device" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary left


def test_export_weights_bad_input(runs, tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    for args, message in [
        ([99, "--out", tmp_path / "o"], "no run with id 99"),
        ([3, "--out", tmp_path / "o"], "run 3 is a bench run"),
        ([4, "--out", tmp_path / "o"], "run 4 has no checkpoint"),
    ]:
        r = invoke("runs", "export-weights", *args, "--db", runs)
        assert r.exit_code == 2 and message in r.stderr, r.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- tokenizers


@pytest.mark.slow
def test_a_trained_bpe_run_samples_and_exports_its_tokenizer(tmp_path):
    from racli.dataprep.prepare import PrepareSettings, prepare

    text = gzip.decompress(
        importlib.resources.files("racli").joinpath("data/corpus.txt.gz").read_bytes()
    ).decode()[:120_000]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"{i}.txt").write_text(text[i * 3000 : (i + 1) * 3000])
    data = tmp_path / "bpe"
    prepare(PrepareSettings(sources=[str(docs)], out=data, tokenizer="train:300", val_fraction=0.2))
    store = open_store(str(tmp_path / "ra.db"))
    run_id = train_run(store, "ra_v5", 0, data=str(data), steps=5)
    store.close()
    db = str(tmp_path / "ra.db")
    out = sample_json(db, "--run", run_id, "--prompt", "and the lord")
    assert out["tokenizer"] == "train:300" and out["samples"][0]["text"].startswith("and the lord")
    assert len(out["prompt_ids"]) < len("and the lord")  # merged tokens, not bytes
    empty = sample_json(db, "--run", run_id, "--prompt", "")
    assert empty["prompt_ids"] == [0]  # starts at <|endoftext|>
    w = tmp_path / "w"
    assert invoke("runs", "export-weights", run_id, "--out", w, "--db", db).exit_code == 0
    assert (w / "tokenizer.json").read_text() == (data / "tokenizer.json").read_text()
    assert json.loads((w / "config.json").read_text())["tokenizer"]["file"] == "tokenizer.json"
    assert sample_json(db, "--weights", w, "--prompt", "and the lord")["samples"] == out["samples"]
    # the data prepared again since: its tokenizer may not be the run's
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "content_hash": "0" * 64}))
    r = invoke("sample", "--db", db, "--run", run_id)
    assert r.exit_code == 2 and "prepared again" in r.stderr


def test_byte_codec_decodes_what_it_encodes_and_replaces_bad_bytes():
    from racli.dataprep.codec import codec_for

    c = codec_for("bytes", None, 256)
    assert c.decode(c.encode("héllo\n")) == "héllo\n" and c.eot is None
    assert c.decode([104, 0xC3]) == "h\ufffd"
    with pytest.raises(Exception, match="not GPT-2's"):
        codec_for(None, None, 300)


def test_sample_and_export_commands_do_not_import_torch():
    code = (
        "import sys, racli.cli, racli.commands.sample, racli.store.tensorboard_export; "
        "print(sorted(m for m in ('torch', 'safetensors', 'tensorboard') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr


NANOGPT_NAMES = {
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.ln_f.weight",
    *(
        f"transformer.h.{i}.{n}"
        for i in (0, 1)
        for n in (
            "ln_1.weight",
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "ln_2.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        )
    ),
}


@pytest.mark.slow
def test_nanogpt_export_writes_ra_v5_as_its_composed_c_attn(runs, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "n"
    r = invoke("runs", "export-weights", 1, "--out", out, "--nanogpt", "--db", runs)
    assert r.exit_code == 0, r.output
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == NANOGPT_NAMES
    conf = json.loads((out / "config.json").read_text())
    assert conf["attn"] == "baseline" and conf["composed_from"] == "ra_v5"
    store = open_store(runs, readonly=True)
    original = weights.from_run(store, 1)
    store.close()
    loaded = weights.from_folder(out)  # a baseline model: nanoGPT's attention
    assert loaded.attn == "baseline"
    x = torch.randint(0, 256, (2, BLOCK))
    with torch.no_grad():
        a, b = original.model(x)[0], loaded.model(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    by_run = sample_json(runs, "--run", 1, "--seed", 2, "--temperature", 0)
    assert (
        sample_json(runs, "--weights", out, "--seed", 2, "--temperature", 0)["samples"]
        == (by_run["samples"])
    )


def test_nanogpt_export_refuses_variants_it_cannot_hold():
    from racli.errors import BadInput

    for attn in ("ra_beta", "sdpa_gate"):
        model = GPT(GPTConfig(attn=attn, n_layer=1, n_head=2, n_embd=16, block_size=8), seed=0)
        with pytest.raises(BadInput, match="no place"):
            weights.nanogpt_tensors(model)


@pytest.mark.slow
def test_a_nanogpt_character_folder_samples_with_its_meta_pkl(tmp_path):
    import pickle

    import numpy as np

    text = gzip.decompress(
        importlib.resources.files("racli").joinpath("data/corpus.txt.gz").read_bytes()
    ).decode()[:60_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = tmp_path / "shakespeare_char"
    data.mkdir()
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    ids[:54_000].tofile(data / "train.bin")
    ids[54_000:].tofile(data / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    (data / "meta.pkl").write_bytes(pickle.dumps(meta))
    db = str(tmp_path / "ra.db")
    store = open_store(db)
    run_id = train_run(store, "baseline", 0, data=str(data), steps=3)
    store.close()
    out = sample_json(db, "--run", run_id, "--prompt", "ROMEO")
    assert out["tokenizer"] == "chars" and out["prompt_ids"] == [stoi[c] for c in "ROMEO"]
    assert out["samples"][0]["text"].startswith("ROMEO")
    w = tmp_path / "w"
    assert invoke("runs", "export-weights", run_id, "--out", w, "--db", db).exit_code == 0
    conf = json.loads((w / "config.json").read_text())
    assert conf["tokenizer"] == {"name": "chars", "file": None, "chars": chars}
    assert sample_json(db, "--weights", w, "--prompt", "ROMEO")["samples"] == out["samples"]
    r = invoke("sample", "--db", db, "--run", run_id, "--prompt", "R\u00e9")
    assert r.exit_code == 2 and "do not include" in r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ATTENTION_NAMES)
def test_generate_on_cuda_is_seeded_and_greedy_takes_the_argmax(attn):
    """On the GPU: one seed gives one sample, another seed another; greedy decoding
    picks, at every position, the token of the model's own argmax."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=32, attn=attn)
    model = GPT(cfg).cuda().eval()
    idx = torch.randint(0, 97, (2, 5), device="cuda")

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            return model.generate(idx, 40, temperature=1.0, top_k=20, generator=g)

    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (2, 45) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 97 and int(a.min()) >= 0
    with torch.no_grad():
        greedy = model.generate(idx, 10, temperature=0)
        logits, _ = model(greedy[:, :-1])
    # the model's own argmax at each generated position is the token it chose
    chosen = logits[:, 4:, :].argmax(-1)
    assert torch.equal(chosen, greedy[:, 5:])
