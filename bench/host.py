"""The machine a benchmark ran on, for its JSON, and a short name for its files (cpu2, cpu16-h100)."""
from __future__ import annotations

import datetime
import os
import platform
import re
from importlib import metadata
from typing import Any

VERSIONS = ("torch", "torchaudio", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "librosa", "numpy", "soundfile",
            "numba", "soxr")


def gpu_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100"; "NVIDIA GeForce RTX 4090" -> "rtx4090"."""
    words = [w.lower() for w in re.split(r"[\s_]+", name) if w.lower() not in ("nvidia", "geforce", "tesla")]
    words = words[:2] if words and words[0] in ("rtx", "gtx") else words[:1]
    return re.sub(r"[^a-z0-9]+", "", "".join(words))


def host_info() -> dict[str, Any]:
    """cores, CPU model, GPU (torch's name of device 0), platform, python, package versions, kind."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu_model": None, "gpu": None}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["kind"] = f"cpu{os.cpu_count()}" + (f"-{gpu_slug(info['gpu'])}" if info["gpu"] else "")
    versions = {}
    for dist in VERSIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def describe(host: dict) -> str:
    """'cpu2 (AMD EPYC ...)' or 'cpu16-h100 (Intel ..., NVIDIA H100 ...)', for table titles."""
    return f"{host['kind']} ({host['cpu_model'] or '?'}{', ' + host['gpu'] if host['gpu'] else ''})"


def today() -> str:
    return datetime.date.today().strftime("%Y%m%d")
