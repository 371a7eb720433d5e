"""Environment and provenance of a measurement: software, hardware, host, code version."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from . import __version__


def git_commit(start: str | Path = ".") -> dict:
    """Commit of the working tree (and whether it has uncommitted changes), or nulls outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=start,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": rev.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def in_container() -> str | None:
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return "apptainer"
    if Path("/.dockerenv").exists():
        return "docker"
    if Path("/run/.containerenv").exists():
        return "podman"
    return None


def container_image(uri: str | None = None) -> dict | None:
    """The Apptainer image this process runs in: its file (Apptainer sets APPTAINER_CONTAINER inside) and the URI
    the campaign asked for (``containers:``), or None outside Apptainer."""
    path = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not path:
        return None
    return {"file": path, "uri": uri}


def collect(backend_versions: dict, gpus: list[dict], driver: dict, image_uri: str | None = None) -> dict:
    from .energy.cpu import cpu_model_name

    env = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "container": in_container(),
        "container_image": container_image(image_uri),
        "software": dict(backend_versions),
        "gpus": [{k: g[k] for k in ("cuda_index", "nvml_index", "uuid", "name", "mig")} for g in gpus],
        "nvidia_driver": driver or None,
    }
    try:
        import torch

        env["software"]["cuda_runtime"] = torch.version.cuda
    except ImportError:
        pass
    return env


def provenance() -> dict:
    return {"package": "llenergymeasure", "package_version": __version__, "git": git_commit()}
