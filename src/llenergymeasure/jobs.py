"""Entry points of the workflow's scripts: each rule's script unpacks ``snakemake`` and calls one function here."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

from .notify import notify
from .paths import CACHE_ENV, cache_dir_is_set
from .process import die_with_parent, select_gpus
from .record.layout import Layout, cycle_of, experiment_of, locate
from .runtime import Runtime

log = logging.getLogger("llenergymeasure")


class _Labelled(logging.Formatter):
    """A console line that does not begin with the job's label gets it as a prefix: lines of shared code that does
    not know the job (the warm-up, the idle baseline) still say whose they are where jobs' lines mix."""

    def __init__(self, label: str) -> None:
        super().__init__("%(message)s")
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith(self.label) else f"{self.label}: {text}"


@contextlib.contextmanager
def logging_to(
    path: str | None,
    level: str | None = None,
    notifications: dict | None = None,
    label: str = "job",
    labelled: bool = False,
):
    """Send the package's logging (and warnings) to the rule's log file for the duration of a job; progress lines
    also go to the console unless ``LLM_ENERGY_VERBOSITY=quiet`` (verbose: every log line, at DEBUG level), and a
    console that has shown nothing of the job for a while gets a heartbeat line naming ``label`` and what the job is
    doing (:mod:`.heartbeat`). With ``labelled``, every console line begins with ``label``. Secret values (the
    webhook URL's credentials in ``notifications``, ``HF_TOKEN``) are replaced by ``***`` in both."""
    from .heartbeat import Heartbeat
    from .redaction import SecretFilter, secrets

    hide = SecretFilter(secrets(notifications))
    handler = logging.FileHandler(path, mode="w", encoding="utf-8") if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(hide)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    level = level or os.environ.get("LLM_ENERGY_VERBOSITY", "normal")
    root.setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
    console = None
    beat = contextlib.nullcontext()
    if path and level != "quiet":
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(_Labelled(label) if labelled else logging.Formatter("%(message)s"))
        if level == "normal":
            console.addFilter(lambda record: record.name == "llenergymeasure.progress")
        console.addFilter(hide)
        beat = Heartbeat(label)
        console.addFilter(beat.seen)  # last: only the lines the console shows
        root.addHandler(console)
    logging.captureWarnings(True)
    try:
        with beat:
            yield
    finally:
        root.removeHandler(handler)
        if console:
            root.removeHandler(console)
        root.setLevel(old_level)
        handler.close()


def measure(config: dict, experiment_id: str, cycle: int, model_path: str, output: str, log_path: str, runtime):
    """Measurement rule: run one cycle, report it (:func:`report_measured`) and publish its raw result, in that
    order; or report its failure (:func:`report_failure`).

    Publishing is the job's last act: the completion notification (up to its webhook's deadline) and the log lines
    come before it, and the measure script ends the process right after it (scripts/measure.py), so that a job
    killed at any point either leaves no raw result (the measurement is retried) or one Snakemake keeps (it deletes
    the outputs of a job that fails, and a kill is a failure).

    A failure ends the job with exit code 1 (no raw result: a rerun retries it). A raw result that another run wrote
    meanwhile is kept and this job's measurement discarded, saying so: the job then succeeds (were it to fail,
    Snakemake would delete the output of the failed job, the other run's result).

    ``config`` is the sparse experiment config (the rule's params); defaults are filled in here. ``runtime`` is
    ``config["_lem"]`` (:class:`~llenergymeasure.runtime.Runtime`)."""
    from .campaign import complete_config
    from .measure import run_experiment
    from .results import ResultExistsError, refuse_replacing

    die_with_parent()
    facts = Runtime.from_config(runtime)
    _share_host_cache(facts)
    config = complete_config(config)
    gpu_env = select_gpus(config)
    with logging_to(log_path, facts.verbosity, facts.notifications, f"{experiment_id} cycle {cycle}", labelled=True):
        log.info(
            "experiment %s (%s), cycle %s, model %s", experiment_id, facts.name_of(experiment_id), cycle, model_path
        )
        if gpu_env:
            log.info("GPUs: %s", gpu_env)

        def report(result: dict) -> None:
            refuse_replacing(output)  # another run's: kept, and this measurement neither reported nor written
            report_measured(facts, experiment_id, cycle, result, output)

        try:
            run_experiment(
                config, experiment_id, cycle, model_path, output, facts.job_context(config["backend"]), report
            )
        except ResultExistsError as exc:
            log.warning("%s; this measurement was discarded", exc)
            print(f"{experiment_id} cycle {cycle}: {exc}; this measurement was discarded", file=sys.stderr)
            return
        except Exception as exc:  # noqa: BLE001 - any failure of a measurement is recorded and reported, never lost
            report_failure(facts, experiment_id, cycle, exc, log_path)
            raise SystemExit(1) from None
        except BaseException:  # interrupted (SIGTERM from Snakemake, Ctrl-C): not a failure of the experiment
            log.error("measurement interrupted:\n%s", traceback.format_exc())
            raise
        log.info("published %s", output)


def end_published_job() -> None:
    """End a measurement job's process right after its raw result is published (or found kept), skipping the
    interpreter's teardown: the engines' and torch's exit handlers take a second or more, and a job killed meanwhile
    fails in Snakemake's eyes, which then deletes its output, the finished measurement. Worker processes the engine
    left behind are stopped first (an engine's close normally ends them all), and the console is flushed."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def report_failure(facts: Runtime, experiment_id: str, cycle: int, exc: BaseException, log_path: str) -> None:
    """A failed measurement: its traceback in the log, its record for the campaign's ``failures.json`` (error and
    log path), the failure notification, and one line on the console."""
    from .failures import write_record
    from .redaction import scrub, secrets

    name = facts.name_of(experiment_id)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = scrub(f"{type(exc).__name__}: {first_line}", secrets(facts.notifications))
    log.error("measurement failed:\n%s", traceback.format_exc())
    if facts.results_root:
        write_record(facts.results_root, experiment_id, name, cycle, error, log_path)
    sent = notify(
        facts.notifications,
        "failure",
        facts.campaign_id,
        experiment_id,
        {
            "config_name": name,
            "cycle": cycle - 1,
            "cycle_number": cycle,
            "exit_code": 1,
            "error": error,
            "log": log_path,
        },
    )
    if sent:
        log.info("failure notification: %s", {k: v for k, v in sent.items() if k != "payload"})
    print(f"Measurement failed: {experiment_id} cycle {cycle}: {error} (log: {log_path})", file=sys.stderr)


def report_measured(facts: Runtime, experiment_id: str, cycle: int, result: dict, output: str) -> None:
    """A finished measurement, before its raw result is published: any failure record of an earlier attempt
    cleared, a summary line in the log, the completion notification."""
    from .failures import clear_record

    if facts.results_root:
        clear_record(facts.results_root, experiment_id, cycle)
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
        facts.notifications,
        "complete",
        facts.campaign_id,
        experiment_id,
        {
            "config_name": facts.name_of(experiment_id),
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


def _share_host_cache(facts: Runtime) -> None:
    """Use the cache folder of the host that planned the campaign (idle baselines, the host's measurement lock and
    last window) when this job sees it: inside an Apptainer image ``~`` is the working directory, and the lock
    must be the one every campaign on the host takes."""
    folder = facts.cache_dir
    if folder and not cache_dir_is_set() and os.path.isdir(folder) and os.access(folder, os.W_OK):
        os.environ[CACHE_ENV] = folder


def build_model(output: str, log_path: str) -> None:
    from .tiny_model import build_tiny_llama

    with logging_to(log_path, label=f"building the embedded model {Path(output).name}"):
        build_tiny_llama(output)
        log.info("built embedded model in %s", output)


def aggregate(
    inputs: list[str],
    out_dir: str,
    summary: str,
    log_path: str,
    names: dict,
    analysis: dict,
    failures: str | None = None,
    runtime=None,
) -> None:
    """Aggregation rule: every experiment across its cycles, then the summary, in one job; and ``failures.json``,
    every planned measurement without a raw result (none, unless this is the pass over what completed).

    A raw result that cannot be read ends the job with one line naming it (and what to do); the previous derived
    files stay as they were (nothing is written before every input has been read, and Snakemake restores the
    outputs it backed up: they are ``update()`` outputs). Each experiment's raw results are compared with what
    the decisions it rests on and its previous aggregated result recorded of them (flag ``raw_result_changed``),
    and its raw results on disk that are not aggregated are listed (flag ``cycles_not_aggregated``): one line each
    on the console."""
    from .aggregate import AggregationError, group_by_experiment, write_aggregated_all
    from .failures import report
    from .precision import DecisionError, decisions_on_disk, decisions_used, from_params
    from .results import ResultValidationError, write_json_atomic

    facts = Runtime.from_config(runtime)
    cycles = facts.cycles
    target = from_params(facts.precision)
    root = facts.results_root or str(Path(summary).parent)
    with logging_to(log_path, label="aggregation"):
        try:
            # with a precision target the inputs also hold the decision that stopped each experiment
            inputs = [p for p in inputs if not _is_decision(p)]
            grouped = group_by_experiment(inputs)
            ordered = {e: grouped[e] for e in names if e in grouped}  # campaign order
            decisions = {}
            if target:  # the cycles the decisions taken so far have scheduled, and the decisions used
                cycles = {e: decisions_on_disk(root, e, target)[0] for e in names}
                decisions = {e: decisions_used(root, e, target, max(map(cycle_of, ps))) for e, ps in ordered.items()}
            left_out = {e: _left_out(root, e, ps, target, cycles) for e, ps in ordered.items()}
            said: list[str] = []
            rows = write_aggregated_all(
                ordered,
                names,
                out_dir,
                summary,
                analysis["cv_threshold"],
                analysis["confidence"],
                cycles,
                target,
                decisions,
                left_out,
                said,
            )
        except (AggregationError, ResultValidationError, DecisionError) as exc:
            log.error("aggregation failed: %s", exc)
            print(f"Aggregation error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        log.info("aggregated %d experiments; summary in %s", len(rows), summary)
        for line in said:
            log.warning("%s", line)
            print(line, file=sys.stderr)
        if failures:
            present = {(experiment_of(p), cycle_of(p)) for p in inputs}
            record = report(root, names, cycles or 0, present)
            write_json_atomic(failures, record, durable=False)
            for f in record["failures"]:
                log.warning("failed: %s cycle %s: %s (log: %s)", f["experiment_id"], f["cycle"], f["error"], f["log"])


def _left_out(root: str, experiment_id: str, aggregated: list[str], target, cycles) -> list[dict]:
    """The raw results of an experiment on disk that are not among those aggregated, each with why."""
    layout = Layout(root)
    taken = {cycle_of(p) for p in aggregated}
    last = max(taken)
    on_disk = sorted(cycle_of(p) for p in layout.raw_files(experiment_id))
    out = []
    for c in on_disk:
        if c in taken:
            continue
        if target and c > last and os.path.exists(layout.decision(experiment_id, last)):
            why = f"measured after {layout.decision(experiment_id, last)}, which stopped the experiment"
        elif not target and isinstance(cycles, int) and c > cycles:
            why = f"beyond execution.cycles = {cycles}"
        else:
            why = "not among the cycles this campaign plans"
        out.append({"cycle": c, "reason": why})
    return out


def _is_decision(path: str) -> bool:
    found = locate(path)
    return found is not None and found.kind == "decision"


def decide(raw: list[str], experiment_id: str, after_cycle: int, target: dict, output: str, log_path: str) -> None:
    """Checkpoint ``decide``: after cycle ``after_cycle`` of an experiment, stop it or ask for one more cycle. A raw
    result that cannot be read ends the job with one line naming it."""
    from .aggregate import AggregationError
    from .precision import DecisionError, from_params, percent
    from .precision import decide as take_decision
    from .results import ResultValidationError

    raw = [raw] if isinstance(raw, str) else list(raw)
    with logging_to(log_path, label=f"{experiment_id} decision after cycle {after_cycle}"):
        try:
            record = take_decision(raw, experiment_id, after_cycle, from_params(target), output)
        except (DecisionError, AggregationError, ResultValidationError) as exc:
            log.error("decision failed: %s", exc)
            print(f"Decision error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        verdict = {
            "target_met": "target met: stop",
            "max_cycles_reached": "max_cycles reached: stop (target not met)",
            "target_not_met": "one more cycle",
            "too_few_values": "one more cycle (too few cycles have a value)",
        }.get(record["reason"], record["reason"])
        progress = logging.getLogger("llenergymeasure.progress")
        progress.info(
            "%s after cycle %d: %s interval ±%s, ±%s with the spread's upper bound (target ±%s): %s",
            experiment_id,
            after_cycle,
            record["metric"],
            percent(record["achieved_relative_half_width"]),
            percent(record["judged_relative_half_width"]),
            percent(target["relative_half_width"]),
            verdict,
        )


def thermal_gaps(aggregated: list[str], output: str, log_path: str) -> None:
    from .thermal import thermal_audit

    with logging_to(log_path, label="thermal-gap audit"):
        report = thermal_audit(list(aggregated), output)
        for p in report["problems"]:
            log.warning("thermal gap: %s cycle %s: %s", p["experiment_id"], p["cycle"], p["problem"])


def campaign_complete(summary: str, output: str, log_path: str, runtime) -> None:
    """Campaign-end notification; writes what was sent (or why nothing was) as the rule's output. After a campaign
    with failed measurements (the pass over what completed), the event is ``campaign_failure`` and lists them."""
    import json

    from .aggregate import read_summary
    from .results import write_json_atomic

    facts = Runtime.from_config(runtime)
    with logging_to(log_path, notifications=facts.notifications, label="campaign notification"):
        rows = read_summary(summary)
        failures_path = Layout(str(Path(summary).parent)).failures
        try:
            failed = json.loads(Path(failures_path).read_text(encoding="utf-8"))["failures"]
        except (OSError, ValueError, KeyError, TypeError):
            failed = []
        data = {
            "campaign_name": facts.campaign_name,
            "total_experiments": len(facts.names or rows),
            "completed_experiments": len(rows),
            "cycles": facts.cycles,
            "summary_path": summary,
            "flagged_experiments": [r["experiment_id"] for r in rows if r["cv_flag"]],
        }
        if facts.precision:  # cycles until precise: the target, and who stopped at max_cycles short of it
            data.update(
                precision_target=facts.precision,
                cycles_run={r["experiment_id"]: r["cycles"] for r in rows},
                precision_target_not_met=[r["experiment_id"] for r in rows if not r.get("precision_target_met")],
            )
        event = "campaign_complete"
        if failed:
            event = "campaign_failure"
            data.update(
                failures_path=failures_path,
                failed_measurements=[
                    {k: f[k] for k in ("experiment_id", "config_name", "cycle", "error", "log")} for f in failed
                ],
            )
        sent = notify(facts.notifications, event, facts.campaign_id, None, data)
        gate = "on_failure" if failed else "on_complete"
        record = {
            "event_type": event,
            "data": data,
            "delivery": sent or {"sent": False, "error": f"no webhook_url, or {gate} is false"},
        }
        write_json_atomic(output, record)


def campaign_failed(runtime, data: dict | None = None) -> None:
    """A campaign that stopped with failures, when no aggregation pass could report them: tell the webhook."""
    facts = Runtime.from_config(runtime)
    notify(
        facts.notifications,
        "campaign_failure",
        facts.campaign_id,
        None,
        {"campaign_name": facts.campaign_name, **(data or {})},
    )


def report_plots(aggregated: list[str], raw: list[str], out_dir: str, log_path: str) -> None:
    from .report import write_report_files

    with logging_to(log_path, label="report plots"):
        info = write_report_files(list(aggregated), list(raw), out_dir)
        log.info("report plots in %s (Pareto front: %s; timeline of %s)", out_dir, info["pareto"], info["timeline_run"])
