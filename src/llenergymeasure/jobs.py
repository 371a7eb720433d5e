"""Entry points of the workflow's scripts: each rule's script unpacks ``snakemake`` and calls one function here."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from .notify import notify

log = logging.getLogger("llenergymeasure")


@contextlib.contextmanager
def logging_to(path: str | None, level: str | None = None):
    """Send the package's logging (and warnings) to the rule's log file for the duration of a job; progress lines
    also go to the console unless ``LLM_ENERGY_VERBOSITY=quiet`` (verbose: every log line, at DEBUG level)."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8") if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    level = level or os.environ.get("LLM_ENERGY_VERBOSITY", "normal")
    root.setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
    console = None
    if path and level != "quiet":
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        if level == "normal":
            console.addFilter(lambda record: record.name == "llenergymeasure.progress")
        root.addHandler(console)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if console:
            root.removeHandler(console)
        root.setLevel(old_level)
        handler.close()


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


def measure(config: dict, experiment_id: str, cycle: int, model_path: str, output: str, log_path: str, runtime: dict):
    """Measurement rule: run one cycle, notify completion or failure, re-raise failures (the job fails).

    ``config`` is the sparse experiment config (the rule's params); defaults are filled in here."""
    from .campaign import complete_config
    from .measure import run_experiment

    die_with_parent()
    config = complete_config(config)
    gpu_env = select_gpus(config)
    name = runtime.get("names", {}).get(experiment_id, experiment_id)
    settings = runtime.get("notifications")
    with logging_to(log_path, runtime.get("verbosity")):
        log.info("experiment %s (%s), cycle %s, model %s", experiment_id, name, cycle, model_path)
        if gpu_env:
            log.info("GPUs: %s", gpu_env)
        try:
            result = run_experiment(
                config,
                experiment_id,
                cycle,
                model_path,
                output,
                {
                    "campaign_name": runtime.get("campaign_name"),
                    "campaign_id": runtime.get("campaign_id"),
                    "state_dir": runtime.get("state_dir"),
                    "config_gap_s": runtime.get("config_gap_s", 0.0),
                    "cycle_gap_s": runtime.get("cycle_gap_s", 0.0),
                    "container_uri": runtime.get("containers", {}).get(config["backend"]),
                },
            )
        except BaseException as exc:
            log.error("measurement failed:\n%s", traceback.format_exc())
            sent = notify(
                settings,
                "failure",
                runtime.get("campaign_id"),
                experiment_id,
                {"config_name": name, "cycle": cycle - 1, "cycle_number": cycle, "exit_code": 1, "error": f"{type(exc).__name__}: {exc}"},
            )
            if sent:
                log.info("failure notification: %s", {k: v for k, v in sent.items() if k != "payload"})
            raise
        total = result["energy"]["total"]
        log.info(
            "done: window %.3f s, %d output tokens, energy %s J (%s), flags: %s",
            result["timestamps"]["window_duration_s"],
            result["tokens"]["output_tokens"],
            total["gross_energy_j"],
            total["method"],
            ", ".join(f["code"] for f in result["flags"]) or "none",
        )
        sent = notify(
            settings,
            "complete",
            runtime.get("campaign_id"),
            experiment_id,
            {
                "config_name": name,
                "cycle": cycle - 1,
                "cycle_number": cycle,
                "result_path": output,
                "energy_j": total["gross_energy_j"],
                "energy_method": total["method"],
                "j_per_output_token": result["efficiency"]["j_per_output_token"],
            },
        )
        if sent:
            log.info("completion notification: %s", {k: v for k, v in sent.items() if k != "payload"})


def build_model(output: str, log_path: str) -> None:
    from .tiny_model import build_tiny_llama

    with logging_to(log_path):
        build_tiny_llama(output)
        log.info("built embedded model in %s", output)


def aggregate(inputs: list[str], out_dir: str, summary: str, log_path: str, names: dict, analysis: dict) -> None:
    """Aggregation rule: every experiment across its cycles, then the summary, in one job."""
    from .aggregate import group_by_experiment, write_aggregated_all

    with logging_to(log_path):
        grouped = group_by_experiment(list(inputs))
        ordered = {e: grouped[e] for e in names if e in grouped}  # campaign order
        rows = write_aggregated_all(ordered, names, out_dir, summary, analysis["cv_threshold"], analysis["confidence"])
        log.info("aggregated %d experiments; summary in %s", len(rows), summary)


def thermal_gaps(aggregated: list[str], output: str, log_path: str) -> None:
    from .aggregate import thermal_audit

    with logging_to(log_path):
        report = thermal_audit(list(aggregated), output)
        for p in report["problems"]:
            log.warning("thermal gap: %s cycle %s: %s", p["experiment_id"], p["cycle"], p["problem"])


def campaign_complete(summary: str, output: str, log_path: str, runtime: dict) -> None:
    """Campaign-end notification; writes what was sent (or why nothing was) as the rule's output."""
    from .aggregate import read_summary
    from .results import write_json_atomic

    with logging_to(log_path):
        rows = read_summary(summary)
        data = {
            "campaign_name": runtime.get("campaign_name"),
            "total_experiments": len(rows),
            "cycles": runtime.get("cycles"),
            "summary_path": summary,
            "flagged_experiments": [r["experiment_id"] for r in rows if r["cv_flag"]],
        }
        sent = notify(runtime.get("notifications"), "campaign_complete", runtime.get("campaign_id"), None, data)
        record = {"event_type": "campaign_complete", "data": data, "delivery": sent or {"sent": False, "error": "no webhook_url, or on_complete is false"}}
        write_json_atomic(output, record)


def campaign_failed(runtime: dict, log_text: str | None = None) -> None:
    """Snakemake ``onerror`` handler: tell the webhook the campaign stopped with failures."""
    notify(
        runtime.get("notifications"),
        "campaign_failure",
        runtime.get("campaign_id"),
        None,
        {"campaign_name": runtime.get("campaign_name"), "log": log_text},
    )


def report_plots(aggregated: list[str], raw: list[str], out_dir: str, log_path: str) -> None:
    from .report import write_report_files

    with logging_to(log_path):
        info = write_report_files(list(aggregated), list(raw), out_dir)
        log.info("report plots in %s (Pareto front: %s; timeline of %s)", out_dir, info["pareto"], info["timeline_run"])
