"""Environment fingerprint: what machine and software a run measured on.

torch is imported here only when a fingerprint is taken, never at CLI start.
The fingerprint is a hash of every field, so one row per distinct
environment lands in `environments`. The environment is per device: the
CUDA device the run uses (its index and UUID) is part of it, so two GPUs of
one host are two environments. The environment *class* used to decide which
runs are comparable is GPU name + torch version (`env_class`), the same for
both.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _gpu_uuid(props) -> str | None:
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith("GPU-") else f"GPU-{text}"


def collect(device_index: int | None = None) -> dict:
    """The environment's fields (imports torch), for CUDA device `device_index`
    (default: the current device, which training sets before it records a run)."""
    import torch

    cuda_ok = torch.cuda.is_available()
    idx = None
    if cuda_ok:
        idx = torch.cuda.current_device() if device_index is None else int(device_index)
    props = torch.cuda.get_device_properties(idx) if cuda_ok else None
    info = {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda_ok else None,
        "cudnn": str(torch.backends.cudnn.version())
        if cuda_ok and torch.backends.cudnn.is_available()
        else None,
        "gpu_name": props.name if cuda_ok else None,
        "gpu_index": idx,
        "gpu_uuid": _gpu_uuid(props) if cuda_ok else None,
        "gpu_count": torch.cuda.device_count() if cuda_ok else 0,
        "gpu_memory_gb": round(props.total_memory / 2**30, 1) if cuda_ok else None,
        "driver": _driver_version() if cuda_ok else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    return info


def fingerprint_of(info: dict) -> str:
    blob = json.dumps(info, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def device_label(hostname: str | None, gpu_index: int | None, gpu_uuid: str | None) -> str:
    """Where a run ran: "node1 cuda:1 (GPU-3f2a9c1e)", "node1 cpu"."""
    host = hostname or "?"
    if gpu_index is None and gpu_uuid is None:
        return f"{host} cpu"
    where = f"cuda:{gpu_index}" if gpu_index is not None else "cuda"
    return f"{host} {where}" + (f" ({gpu_uuid[:12]})" if gpu_uuid else "")


def env_class(gpu_name: str | None, torch_version: str | None) -> str:
    """Runs are comparable within one class: the GPU (or CPU) and the torch version."""
    return f"{gpu_name or 'cpu'} / torch {torch_version or '?'}"


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD of the git checkout at cwd (with '-dirty' if it has changes), else None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = head.stdout.strip()
    return sha + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
