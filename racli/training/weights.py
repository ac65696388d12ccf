"""A trained model: loaded from a run's checkpoint or an exported folder, and exported.

    trained = from_run(store, 12)          # or from_checkpoint(path), from_folder(dir)
    export(trained, Path("out"))           # model.safetensors + config.json (+ tokenizer.json)

An exported folder holds the model's tensors under their names in racli_models.GPT
(nanoGPT's for everything the two share; README `ra runs export-weights` maps them),
the LM head left out (tied to `transformer.wte.weight`), and a config.json with the
architecture, the attention variant, the tokenizer, the data's content hash and the
run's uuid: enough for `ra sample --weights DIR` to load it back.

An export writes only into a new or empty folder, or one that holds an earlier export
and nothing else (`check_export_folder`): its files are replaced, nothing else ever is.
A config.json that does not describe the tensors beside it (a missing key, a value of
the wrong type or out of range, sizes the tensors do not have) is one line naming the
folder, found before the model is built.
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
from racli.dataprep.paths import NOT_REGULAR, is_special, listed, user_path
from racli.dataprep.writer import TOKENIZER_FILE
from racli.errors import BadInput, first_line
from racli.store import checkpoints as ckpt_paths
from racli.store.queries import get_run
from racli.training import checkpoint as ckpt

FORMAT = "ra-weights/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIED = {"lm_head.weight": "transformer.wte.weight"}  # left out of the file: the same tensor
NANOGPT_ATTN = ("baseline", "ra_v5", "ra_v5_untied")  # what --nanogpt can write
ARCHITECTURE = "GPT-2 (nanoGPT layout: pre-LayerNorm blocks, learned positions, tied LM head)"
EXPORT_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE})  # what `export` writes


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


def _build(attn: Any, model_fields: Any, source: str, tensors: Any):
    """The model `model_fields` describe, once they are checked against `tensors` (its
    weights): BadInput naming `source` for a model ra cannot build or sizes the weights
    do not have, before anything of that size is allocated."""
    from racli_models import GPT, GPTConfig

    if not isinstance(attn, str):
        raise BadInput(f"{source}: the attention {attn!r} is not a name")
    if not isinstance(model_fields, dict):
        raise BadInput(f"{source}: the model settings {model_fields!r} are not an object")
    fields = {k: v for k, v in model_fields.items() if k != "attn"}
    fields["fused_loss"] = False  # sampling needs the logits
    try:
        cfg = GPTConfig(attn=attn, **fields)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{source}: not a model ra can build ({exc})") from exc
    _check_sizes(cfg, tensors, source)
    return GPT(cfg, seed=0)


def _check_sizes(cfg, tensors: Any, source: str) -> None:
    """BadInput unless `tensors` hold the embeddings and layers the sizes of `cfg` give:
    (vocab_size, n_embd) tokens, (block_size, n_embd) positions, n_layer blocks."""
    if not isinstance(tensors, dict):
        raise BadInput(f"{source}: the weights are not a dict of tensors")
    want = {
        "transformer.wte.weight": ((cfg.vocab_size, cfg.n_embd), "vocab_size x n_embd"),
        "transformer.wpe.weight": ((cfg.block_size, cfg.n_embd), "block_size x n_embd"),
    }
    for name, (shape, what) in want.items():
        got = tuple(getattr(tensors.get(name), "shape", ()))
        if got != shape:
            has = "x".join(map(str, got)) if got else "missing"
            raise BadInput(
                f"{source}: the weights do not match the config: {name} is {has}, "
                f"the config's {what} is {shape[0]}x{shape[1]}"
            )
    layers = {k.split(".")[2] for k in tensors if str(k).startswith("transformer.h.")}
    if len(layers) != cfg.n_layer:
        held = f"{len(layers)} layer" + ("" if len(layers) == 1 else "s")
        raise BadInput(
            f"{source}: the weights do not match the config: they hold {held}, the "
            f"config's n_layer is {cfg.n_layer}"
        )


def _load_tensors(model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `tensors` into `model`: every parameter must be there, nothing else (the LM
    head may be left out: it is the token embedding), each of its shape."""
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the model's
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        why = lines[0].rstrip(".") if lines else first_line(exc)
        raise BadInput(f"{source}: the weights do not match the config ({why})") from exc
    missing = [k for k in missing if k not in TIED]
    if missing or unexpected:
        what = [f"missing {', '.join(missing[:3])}"] if missing else []
        what += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
        raise BadInput(f"{source}: the weights do not match the config ({'; '.join(what)})")
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


def from_checkpoint(path: str | Path) -> Trained:
    """The model a checkpoint file of `ra train` holds."""
    path = user_path(path)
    if is_special(path):
        raise BadInput(f"checkpoint {path} {NOT_REGULAR}")
    if not path.is_file():
        raise BadInput(f"no checkpoint file {path}")
    state = ckpt.read(path)
    config = state.config if isinstance(state.config, dict) else {}
    if "model" not in config or "attn" not in config:
        raise BadInput(f"{path}: not a checkpoint of a train run (no model in its config)")
    model = _build(config["attn"], config["model"], str(path), state.model)
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


def from_folder(folder: str | Path) -> Trained:
    """The model of a folder written by `export` (`ra runs export-weights`)."""
    folder = user_path(folder)
    conf_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (conf_path, weights_path):
        if is_special(p):
            raise BadInput(f"{p} {NOT_REGULAR}")
        if not p.is_file():
            raise BadInput(f"{folder} is not an export of ra runs export-weights (no {p.name})")
    conf = read_config(folder)
    st = _safetensors()
    try:
        tensors = st.load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise BadInput(f"cannot read {weights_path}: {type(exc).__name__}: {exc}") from exc
    model = _build(conf["attn"], conf["model"], f"{folder}: {CONFIG_FILE}", tensors)
    _load_tensors(model, tensors, f"{folder}: {CONFIG_FILE}")
    tok = conf["tokenizer"]
    text = None
    if tok.get("file"):
        text = _read_tokenizer(folder / tok["file"])
    info = {k: conf.get(k) for k in ("run_id", "run_uuid", "step", "data")}
    name, chars = tok.get("name"), tok.get("chars")
    return Trained(model, conf["attn"], None if chars else name, text, info, str(folder), chars)


def read_config(folder: Path) -> dict[str, Any]:
    """The config.json of an export in `folder`, its keys checked: BadInput naming the
    folder for one that is missing or of the wrong type."""
    conf_path = folder / CONFIG_FILE
    try:
        conf = json.loads(conf_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {conf_path}: {exc}") from exc
    if not isinstance(conf, dict) or conf.get("format") != FORMAT:
        got = conf.get("format") if isinstance(conf, dict) else None
        raise BadInput(f"{conf_path}: format {got!r} is not {FORMAT}")
    conf["tokenizer"] = conf.get("tokenizer") or {}  # none recorded: the data named none
    for key, kind, what in (
        ("attn", str, "an attention name"),
        ("model", dict, "an object of model settings"),
        ("tokenizer", dict, "an object"),
    ):
        if key not in conf:
            raise BadInput(f"{folder}: {CONFIG_FILE} has no '{key}' key")
        if not isinstance(conf[key], kind):
            raise BadInput(f"{folder}: {CONFIG_FILE}'s '{key}' is {conf[key]!r}, not {what}")
    _check_tokenizer(conf["tokenizer"], folder)
    return conf


def _check_tokenizer(tok: dict[str, Any], folder: Path) -> None:
    """BadInput for a tokenizer entry of config.json that is not what `export` writes: a
    name, a file beside config.json, a character list."""
    name, file, chars = tok.get("name"), tok.get("file"), tok.get("chars")
    where = f"{folder}: {CONFIG_FILE}'s tokenizer"
    if name is not None and not isinstance(name, str):
        raise BadInput(f"{where} name is {name!r}, not a name")
    if file is not None and (not isinstance(file, str) or Path(file).name != file):
        raise BadInput(f"{where} file is {file!r}, not the name of a file beside it")
    if chars is not None and not (
        isinstance(chars, list) and chars and all(isinstance(c, str) for c in chars)
    ):
        raise BadInput(f"{where} chars is not a list of characters")


def _read_tokenizer(path: Path) -> str:
    """The text of an export's tokenizer file (BadInput when it cannot be read)."""
    if is_special(path):
        raise BadInput(f"{path} {NOT_REGULAR}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the tokenizer {path}: {exc}") from exc


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


def _is_export_temporary(name: str) -> bool:
    """Whether `name` is a temporary file of an export killed midway (`.NAME.tmp-PID`)."""
    return any(name.startswith(f".{own}.tmp-") for own in EXPORT_FILES)


def check_export_folder(out: str | Path) -> Path:
    """`out` as a Path (`~` expanded) when an export may be written there: absent, an
    empty folder, or a folder holding an earlier export (its config.json of FORMAT) and
    nothing besides what `export` writes. BadInput (one line, nothing changed) for any
    other: writing there would replace or mix with files an export does not own."""
    out = user_path(out, "--out")
    if not out.exists():
        if out.is_symlink():
            raise BadInput(f"--out {out} is a link to nothing ({os.readlink(out)})")
        return out
    if not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")
    entries = sorted(out.iterdir())
    names = [p.name for p in entries]
    others = [
        p.name
        for p in entries
        if not (p.name in EXPORT_FILES or _is_export_temporary(p.name)) or not p.is_file()
    ]
    if others:
        raise BadInput(
            f"--out {out}: holds {listed(others)}, which ra runs export-weights does not "
            f"write; choose a new or empty folder"
        )
    if names and not _holds_export(out):
        shown = ", ".join(repr(name) for name in names[:3])
        raise BadInput(
            f"--out {out}: holds {shown}, not an export of ra runs export-weights (its "
            f"{CONFIG_FILE} is missing or not of format {FORMAT}); choose a new or empty folder"
        )
    return out


def _holds_export(folder: Path) -> bool:
    """Whether `folder`'s config.json is one `export` wrote."""
    path = folder / CONFIG_FILE
    try:
        conf = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(conf, dict) and conf.get("format") == FORMAT


def export(t: Trained, out: str | Path, nanogpt: bool = False) -> list[Path]:
    """Write WEIGHTS_FILE, CONFIG_FILE (and the tokenizer's file) into `out`, which
    `check_export_folder` allows; `nanogpt`: in nanoGPT's names alone
    (`nanogpt_tensors`). Each file is written to a temporary file first and renamed only
    once all are complete: a failure leaves any earlier export in `out` as it was. An
    earlier export's tokenizer file that this export has none for is removed last."""
    st = _safetensors()
    state = nanogpt_tensors(t.model) if nanogpt else t.model.state_dict()
    out = check_export_folder(out)
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
    for name in EXPORT_FILES - set(tmp):  # an earlier export's, which no longer applies
        with contextlib.suppress(OSError):
            (out / name).unlink()
    return [out / name for name in tmp]
