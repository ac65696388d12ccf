"""`ra sample`'s work: text from a trained model, given a prompt.

    s = SampleSettings(prompt="ROMEO:", tokens=200, temperature=0.8, top_k=200, seed=0)
    check_settings(s)
    out = sample(weights.from_run(store, 12), s)

The prompt is encoded with the run's own tokenizer (racli.dataprep.codec), each sample
drawn by racli_models.GPT.generate from one generator seeded with `seed`, so one seed
gives one text on one device; sample i of --samples N does not depend on N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from racli.errors import BadInput
from racli.names import check_seed, check_tag, resolve_device

DEFAULT_PROMPT = "\n"


@dataclass
class SampleSettings:
    prompt: str = DEFAULT_PROMPT
    tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int = 0
    samples: int = 1
    device: str | None = "auto"


# beyond these, a typing mistake: a million tokens is a few books of text per sample
MAX_TOKENS = 1_000_000
MAX_SAMPLES = 1_000
# below it, logits / temperature overflow float32 (inf, then NaN probabilities)
MIN_TEMPERATURE = 1e-6


def check_settings(s: SampleSettings) -> None:
    """BadInput for a value no model could sample with (before any model is loaded)."""
    if s.tokens < 1:
        raise BadInput(f"--tokens must be at least 1, got {s.tokens}")
    if not (s.temperature == 0 or MIN_TEMPERATURE <= s.temperature < math.inf):
        raise BadInput(
            f"--temperature must be 0 (greedy) or a finite number of at least "
            f"{MIN_TEMPERATURE:g}, got {s.temperature}"
        )
    if s.top_k is not None and s.top_k < 1:
        raise BadInput(f"--top-k must be at least 1, got {s.top_k}")
    if s.samples < 1:
        raise BadInput(f"--samples must be at least 1, got {s.samples}")
    if s.tokens > MAX_TOKENS:
        raise BadInput(f"--tokens must be at most {MAX_TOKENS:,}, got {s.tokens}")
    if s.samples > MAX_SAMPLES:
        raise BadInput(f"--samples must be at most {MAX_SAMPLES:,}, got {s.samples}")
    check_seed(s.seed)
    check_prompt(s.prompt)


def check_prompt(prompt: str) -> None:
    """BadInput for a prompt that is not UTF-8 text (bytes a shell passes as lone
    surrogates), by `check_tag`'s rule; an empty or blank prompt is allowed."""
    if prompt.strip():
        check_tag(prompt, "--prompt", max_len=None, edges=False)


@dataclass
class Samples:
    texts: list[str]  # prompt + continuation, one per sample
    prompt_ids: list[int]
    ids: list[list[int]]  # the new tokens of each sample
    device: str
    tokenizer: str

    def to_dict(self, source: dict) -> dict:
        return {
            **source,
            "tokenizer": self.tokenizer,
            "device": self.device,
            "prompt_ids": self.prompt_ids,
            "samples": [{"text": t, "ids": i} for t, i in zip(self.texts, self.ids)],
        }


def prompt_ids(text: str, codec, vocab_size: int) -> list[int]:
    """The prompt's token ids; an empty prompt starts at end-of-text where there is one."""
    ids = codec.encode(text)
    if not ids:
        if codec.eot is None:
            raise BadInput(
                f"--prompt is empty and the {codec.name} tokenizer has no end-of-text token "
                f"to start from: give a prompt"
            )
        ids = [codec.eot]
    if max(ids) >= vocab_size:
        raise BadInput(
            f"the prompt holds token id {max(ids)}, outside the model's vocabulary ({vocab_size})"
        )
    return ids


def sample(trained, s: SampleSettings) -> Samples:
    """`s.samples` continuations of `s.prompt` from `trained` (a weights.Trained)."""
    import torch

    device = resolve_device(s.device)
    model = trained.model.to(device)
    codec = trained.codec()
    start = prompt_ids(s.prompt, codec, model.config.vocab_size)
    idx = torch.tensor([start], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    texts, new = [], []
    for _ in range(s.samples):
        out = model.generate(idx, s.tokens, temperature=s.temperature, top_k=s.top_k, generator=gen)
        ids = out[0, len(start) :].tolist()
        new.append(ids)
        texts.append(codec.decode(start + ids))
    return Samples(texts, start, new, device, codec.name)
