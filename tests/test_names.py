"""racli.names: the shared names and parsers, and that every user of a rule uses this one."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest
from helpers import REPO

from racli import names
from racli.errors import BadInput


def test_attention_names_agree_with_the_model_registry():
    from racli_models import ATTENTION

    assert set(names.ATTENTION_NAMES) == set(ATTENTION)
    assert len(set(names.ATTENTION_NAMES)) == len(names.ATTENTION_NAMES)


def test_config_and_training_use_the_shared_names():
    from racli import config
    from racli.bench import harness
    from racli.config import schema as config_schema
    from racli.training import spec

    assert config.ATTENTION_NAMES is names.ATTENTION_NAMES
    assert get_args(config_schema.TrainConfig.model_fields["sdpa_backend"].annotation) == (
        names.SDPA_BACKENDS
    )
    assert spec.check_attention is names.check_attention
    assert spec.resolve_device is names.resolve_device
    assert harness.resolve_device is names.resolve_device
    assert harness.check_sdpa_backend is names.check_sdpa_backend
    assert harness.backend_context is names.sdpa_backend_context


def test_check_attention():
    names.check_attention("ra_v5")
    with pytest.raises(BadInput, match=r"unknown attention 'nope' \(valid: baseline, ra_beta, "):
        names.check_attention("nope")


def test_ranked_attention_agrees_with_the_models():
    from racli_models import ATTENTION
    from racli_models.attention import _FoldedRA
    from racli_models.config import RANKED

    assert names.RANKED_ATTENTION == RANKED
    assert set(RANKED) == {n for n, cls in ATTENTION.items() if issubclass(cls, _FoldedRA)}


def test_check_ra_rank():
    names.check_ra_rank("ra_v5", 63, 64)
    names.check_ra_rank("baseline", 64, 64)  # the baseline has no reciprocal part
    names.check_ra_rank("sdpa_gate", 9, 2)
    for rank in (0, 64, 65):
        with pytest.raises(BadInput, match="between 1 and head_dim-1 = 63 for ra_v5_untied"):
            names.check_ra_rank("ra_v5_untied", rank, 64)


def test_comma_list():
    assert names.comma_list(" a, b,,c ,") == ["a", "b", "c"]
    assert names.comma_list(["a ", " ", "b"]) == ["a", "b"]
    assert names.comma_list(("x",)) == ["x"]
    assert names.comma_list(None) == [] and names.comma_list("") == []
    assert names.comma_list("a,a") == ["a", "a"]  # repeats are the caller's business


def test_sdpa_backends_map_to_torch_kernels():
    from torch.nn.attention import SDPBackend

    assert set(names.SDPA_KERNELS) == set(names.SDPA_BACKENDS) - {"auto", names.FA4}
    for name in names.SDPA_KERNELS:
        assert isinstance(names.sdpa_kernel_of(name), SDPBackend)
    assert names.sdpa_kernel_of("math") == SDPBackend.MATH
    assert names.check_sdpa_backend(None) == "auto"
    assert names.check_sdpa_backend(" Flash ") == "flash"
    with pytest.raises(BadInput, match=r"unknown SDPA backend 'xformers' \(valid: auto, flash"):
        names.check_sdpa_backend("xformers")
    with names.sdpa_backend_context("auto"), names.sdpa_backend_context("math"):
        pass


def test_resolve_device():
    import torch

    cuda = torch.cuda.is_available()
    assert names.resolve_device("cpu") == "cpu" and names.resolve_device(" CPU ") == "cpu"
    assert names.resolve_device(None) == names.resolve_device("auto") == ("cuda" if cuda else "cpu")
    with pytest.raises(BadInput, match=r"unknown device 'tpu' \(valid: auto, cpu, cuda, cuda:N\)"):
        names.resolve_device("tpu")
    if not cuda:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(BadInput, match=f"--device {name}: CUDA is not available"):
                names.resolve_device(name)
    else:
        assert names.resolve_device("cuda:0") == "cuda:0"
        with pytest.raises(BadInput, match="no such CUDA device"):
            names.resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert names.device_type("cuda:3") == "cuda" and names.device_type("cpu") == "cpu"


def test_names_imports_no_torch():
    code = "import sys, racli.names, racli.config; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_model_registry_matches_the_model_config_names():
    from racli_models.attention import ATTENTION
    from racli_models.config import ATTENTION_NAMES

    assert tuple(ATTENTION) == ATTENTION_NAMES == names.ATTENTION_NAMES
