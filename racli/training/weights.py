"""A trained model: loaded from a run's checkpoint or an exported folder, and exported.

    trained = from_run(store, 12)          # or from_checkpoint(path), from_folder(dir)
    export(trained, Path("out"))           # model.safetensors + config.json (+ tokenizer.json)

An exported folder holds the model's tensors under their names in racli_models.GPT
(nanoGPT's for everything the two share; README `ra runs export-weights` maps them),
the LM head left out (tied to `transformer.wte.weight`), and a config.json with the
architecture, the attention variant, the tokenizer, the data's content hash and the
run's uuid: enough for `ra sample --weights DIR` to load it back.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from racli.dataprep import codec
from racli.dataprep.writer import TOKENIZER_FILE
from racli.errors import BadInput
from racli.store import checkpoints as ckpt_paths
from racli.store.queries import get_run
from racli.training import checkpoint as ckpt

FORMAT = "ra-weights/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIED = {"lm_head.weight": "transformer.wte.weight"}  # left out of the file: the same tensor
NANOGPT_ATTN = ("baseline", "ra_v5", "ra_v5_untied")  # what --nanogpt can write
ARCHITECTURE = "GPT-2 (nanoGPT layout: pre-LayerNorm blocks, learned positions, tied LM head)"


@dataclass
class Trained:
    """A model ready to run (CPU, eval mode) and what is known of where it comes from."""

    model: Any  # racli_models.GPT
    attn: str
    tokenizer: str | None  # bytes, gpt2, train:N (None: not recorded)
    tokenizer_json: str | None  # the trained BPE's file, when the tokenizer is one
    info: dict[str, Any] = field(default_factory=dict)  # run_id, run_uuid, step, data, ...
    source: str = ""  # what it was loaded from, for messages
    chars: list[str] | None = None  # a nanoGPT character vocabulary (data naming no tokenizer)

    def codec(self) -> codec.TextCodec:
        vocab = self.model.config.vocab_size
        return codec.codec_for(self.tokenizer, self.tokenizer_json, vocab, self.chars)


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        raise BadInput(
            "model.safetensors needs the safetensors package: pip install safetensors"
        ) from None
    return st


def _build(attn: str, model_fields: dict[str, Any], source: str):
    from racli_models import GPT, GPTConfig

    fields = {k: v for k, v in model_fields.items() if k != "attn"}
    fields["fused_loss"] = False  # sampling needs the logits
    try:
        cfg = GPTConfig(attn=attn, **fields)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{source}: not a model ra can build ({exc})") from exc
    return GPT(cfg, seed=0)


def _load_tensors(model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `tensors` into `model`: every parameter must be there, nothing else (the LM
    head may be left out: it is the token embedding)."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k not in TIED]
    if missing or unexpected:
        what = [f"missing {', '.join(missing[:3])}"] if missing else []
        what += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
        raise BadInput(f"{source}: the tensors do not fit the model ({'; '.join(what)})")
    model.lm_head.weight = model.transformer.wte.weight  # keep the tie
    model.eval()


# ---------------------------------------------------------------------------- from a run


def from_run(store, run_id: int) -> Trained:
    """The model of train run `run_id` as its checkpoint holds it (the last one written)."""
    run = get_run(store, run_id)
    if run.kind != "train":
        raise BadInput(f"run {run_id} is a {run.kind} run: only train runs have weights")
    path = ckpt_paths.checkpoint_path(store.db, run_id)
    if not path.is_file():
        raise BadInput(
            f"run {run_id} has no checkpoint (looked for {path}; a run writes one every "
            f"train.checkpoint_minutes and at its end)" + ckpt_paths.legacy_hint(store.db, run_id)
        )
    trained = from_checkpoint(path)
    trained.info.update(run_id=run_id, run_uuid=run.uuid, status=run.status)
    if run.val_loss is not None:
        trained.info["val_loss"] = run.val_loss
    trained.source = f"run {run_id}"
    return trained


def from_checkpoint(path: Path) -> Trained:
    """The model a checkpoint file of `ra train` holds."""
    if not Path(path).is_file():
        raise BadInput(f"no checkpoint file {path}")
    try:
        state = ckpt.load(Path(path))
    except Exception as exc:  # a corrupt file, another format: torch raises many kinds
        raise BadInput(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    config = state.config or {}
    if "model" not in config or "attn" not in config:
        raise BadInput(f"{path}: not a checkpoint of a train run (no model in its config)")
    model = _build(config["attn"], dict(config["model"]), str(path))
    _load_tensors(model, state.model, str(path))
    data = dict(config.get("data") or {})
    name = data.get("tokenizer")
    folder = None if str(state.data_path or "").startswith("builtin:") else state.data_path
    return Trained(
        model=model,
        attn=config["attn"],
        tokenizer=name,
        tokenizer_json=codec.tokenizer_json(folder, name, data.get("content_hash")),
        info={"run_id": state.run_id, "step": state.step, "tokens": state.tokens, "data": data},
        source=str(path),
        chars=codec.nanogpt_chars(folder) if name is None else None,
    )


# ---------------------------------------------------------------------------- exported


def from_folder(folder: Path) -> Trained:
    """The model of a folder written by `export` (`ra runs export-weights`)."""
    folder = Path(folder)
    conf_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (conf_path, weights_path):
        if not p.is_file():
            raise BadInput(f"{folder} is not an export of ra runs export-weights (no {p.name})")
    try:
        conf = json.loads(conf_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {conf_path}: {exc}") from exc
    if not isinstance(conf, dict) or conf.get("format") != FORMAT:
        got = conf.get("format") if isinstance(conf, dict) else None
        raise BadInput(f"{conf_path}: format {got!r} is not {FORMAT}")
    st = _safetensors()
    try:
        tensors = st.load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise BadInput(f"cannot read {weights_path}: {type(exc).__name__}: {exc}") from exc
    model = _build(conf["attn"], dict(conf["model"]), str(folder))
    _load_tensors(model, tensors, str(weights_path))
    tok = conf.get("tokenizer") or {}
    text = None
    if tok.get("file"):
        try:
            text = (folder / tok["file"]).read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"cannot read the tokenizer {folder / tok['file']}: {exc}") from exc
    info = {k: conf.get(k) for k in ("run_id", "run_uuid", "step", "data")}
    name, chars = tok.get("name"), tok.get("chars")
    return Trained(model, conf["attn"], None if chars else name, text, info, str(folder), chars)


def nanogpt_tensors(model) -> dict[str, torch.Tensor]:
    """The state dict in nanoGPT's own names alone: each folded-RA layer's attention
    (ra_v5, ra_v5_untied) written as `attn.c_attn.weight` = its composed weight W_f
    (and `.bias` = b_f), which gives the same attention output as the layer (one GEMM,
    then SDPA at the baseline's shape and scale). BadInput for variants nanoGPT has no
    place for."""
    if model.config.attn not in NANOGPT_ATTN:
        raise BadInput(
            f"--nanogpt: {model.config.attn} has tensors nanoGPT's model.py has no place "
            f"for (it takes {', '.join(NANOGPT_ATTN)})"
        )
    tensors = dict(model.state_dict())
    for i, block in enumerate(model.transformer.h):
        if not hasattr(block.attn, "folded_weight"):
            continue
        prefix = f"transformer.h.{i}.attn."
        for name in [n for n in tensors if n.startswith(prefix)]:
            if not name.startswith(prefix + "c_proj."):
                del tensors[name]
        with torch.no_grad():
            W_f, b_f = block.attn.folded_weight()
        tensors[prefix + "c_attn.weight"] = W_f
        if b_f is not None:
            tensors[prefix + "c_attn.bias"] = b_f
    return tensors


def export_config(t: Trained, nanogpt: bool = False) -> dict[str, Any]:
    """config.json: what the weights are and where they come from."""
    import dataclasses

    model = {
        k: v
        for k, v in dataclasses.asdict(t.model.config).items()
        if k not in ("attn", "fused_loss")
    }
    data = dict(t.info.get("data") or {})
    return {
        "format": FORMAT,
        "architecture": ARCHITECTURE,
        "attn": "baseline" if nanogpt else t.attn,
        "composed_from": t.attn if nanogpt and t.attn != "baseline" else None,
        "model": model,
        "vocab_size": model["vocab_size"],
        "tokenizer": {
            "name": "chars" if t.chars else t.tokenizer,
            "file": TOKENIZER_FILE if t.tokenizer_json is not None else None,
            **({"chars": t.chars} if t.chars else {}),
        },
        "data_hash": data.get("content_hash"),
        "data": data,
        "run_id": t.info.get("run_id"),
        "run_uuid": t.info.get("run_uuid"),
        "step": t.info.get("step"),
        "val_loss": t.info.get("val_loss"),
        "dtype": "float32",
        "tied": dict(TIED),
    }


def _file_mode() -> int:
    """The mode a new file gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def export(t: Trained, out: Path, nanogpt: bool = False) -> list[Path]:
    """Write WEIGHTS_FILE, CONFIG_FILE (and the tokenizer's file) into `out`; `nanogpt`:
    in nanoGPT's names alone (`nanogpt_tensors`). Each file is written to a temporary
    file first and renamed only once all are complete: a failure leaves any earlier
    export in `out` as it was."""
    st = _safetensors()
    state = nanogpt_tensors(t.model) if nanogpt else t.model.state_dict()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {out}: {exc.strerror or exc}") from exc
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in state.items()
        if k not in TIED
    }
    texts = {CONFIG_FILE: json.dumps(export_config(t, nanogpt), indent=2) + "\n"}
    if t.tokenizer_json is not None:
        texts[TOKENIZER_FILE] = t.tokenizer_json
    tmp = {name: out / f".{name}.tmp-{os.getpid()}" for name in (WEIGHTS_FILE, *texts)}
    try:
        st.save_file(tensors, str(tmp[WEIGHTS_FILE]), metadata={"format": "pt"})
        for name, text in texts.items():
            tmp[name].write_text(text, encoding="utf-8")
        mode = _file_mode()
        for p in tmp.values():
            os.chmod(p, mode)  # safetensors creates its file private
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        for name, p in tmp.items():
            os.replace(p, out / name)
    except OSError as exc:
        raise BadInput(f"cannot write the export to {out}: {exc.strerror or exc}") from exc
    finally:
        for p in tmp.values():
            with contextlib.suppress(OSError):
                p.unlink()
    return [out / name for name in tmp]
