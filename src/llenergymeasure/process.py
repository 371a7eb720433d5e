"""The measurement process and the machine it runs on: ending with the workflow, and the GPUs it may see."""

from __future__ import annotations

import os


def die_with_parent() -> None:
    """If Snakemake dies (crash, kill -9), end this measurement too instead of finishing an orphaned window: on
    Linux the kernel sends SIGTERM, which becomes SystemExit so that temp files are cleaned up on the way out."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, _exit)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check before writing still applies


def interrupt_in_one_line(what: str) -> None:
    """Ctrl-C in a job: one line saying what stopped and that nothing of it is kept, instead of the traceback of
    wherever the interrupt landed. The interrupt becomes SystemExit (exit status 1), so cleanup still runs on the
    way out (temp files, the lock) as it does for SIGTERM."""
    import signal

    def _stop(signum, frame):
        raise SystemExit(f"{what}: interrupted (Ctrl-C); nothing of it is kept, a rerun does it again")

    signal.signal(signal.SIGINT, _stop)


def select_gpus(config: dict, environ=os.environ) -> str | None:
    """Make the experiment's ``gpus`` the only CUDA devices this job sees (physical indices, NVML order).

    A scheduler that already assigned GPUs to the job (Slurm sets ``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES``) wins:
    ``gpus`` then only says how many the job needs. Either way CUDA numbers devices in PCI bus order, as NVML and
    nvidia-smi do (CUDA's default, fastest first, pairs the wrong boards on hosts with mixed GPUs). Nothing is set
    for CPU experiments.
    """
    if config["device"] == "cpu":
        return None
    environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if environ.get("SLURM_JOB_GPUS") or environ.get("SLURM_STEP_GPUS"):
        return f"assigned by Slurm: CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')} (CUDA_DEVICE_ORDER=PCI_BUS_ID)"
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in config["gpus"])
    return f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} (CUDA_DEVICE_ORDER=PCI_BUS_ID)"
