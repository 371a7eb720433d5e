"""Run one experiment without Snakemake (debugging, GPU checks):

    python -m llenergymeasure.run experiment.yaml [--cycle 1] [--output raw.json] [--set pytorch.batch_size=8]
    python -m llenergymeasure.run experiment.yaml --dry-run     # its id and non-default values; nothing measured

The experiment file holds experiment fields (as in a campaign's ``configs`` files). The embedded model is built
into the cache folder on first use. Prints a short JSON summary of the measurement on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from .campaign import experiment_id, resolve_experiment, semantic_problems
from .config import set_dotted
from .errors import ConfigError, MeasurementError, problem_lines
from .legacy import EXPERIMENT, annotate, migrate_experiment
from .runtime import JobContext


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_experiment(path: str | None, sets: list[str], notes: list[str] | None = None) -> dict:
    """The resolved experiment of an experiment file (plus ``--set`` overrides), with lem v3's keys read (``notes``
    gets how); one ConfigError naming every problem, each line naming the file."""
    where = path or "experiment"
    data: dict = {}
    if path:
        from .campaign import read_yaml

        data = read_yaml(path)  # YAML or JSON, checked (size, encoding, duplicate keys, ...)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"file '{path}': an experiment must be a mapping of fields, got {type(data).__name__}")
        if "campaign_name" in data:
            raise ConfigError(
                f"file '{path}' is a campaign (it has campaign_name), not an experiment: run it with "
                f"snakemake --cores 1 --config campaign={path}, or check it with lem validate {path}"
            )
    respelled = []
    for item in sets:
        key, _, value = item.partition("=")
        if not _:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        rule = EXPERIMENT.get(key)
        if rule is not None and rule.former:  # over the file's value, whichever spelling the file uses
            respelled.append(
                f"--set '{key}' is {rule.name_for(rule.new)}: read as --set {rule.new}={value} (rename it)"
            )
            key = rule.new
        set_dotted(data, key, _parse_value(value))
    data.pop("config_name", None)
    found = migrate_experiment(data)
    if notes is not None:
        notes.extend(f"{where}: {n}" for n in found.notes + respelled)
    problems, invalid = list(found.problems), []
    try:
        from .config import schema_problems

        invalid = annotate(schema_problems(found.data, "campaign", ref="experiment"), found.renamed)
    except ImportError:  # no jsonschema (e.g. a bare GPU machine): defaults still come from the schema
        logging.getLogger(__name__).warning("jsonschema not installed: experiment not validated")
    problems += invalid
    if not invalid:  # what cannot run together, once every value is valid in itself (as a campaign checks it)
        config = resolve_experiment(found.data)
        problems += semantic_problems(config)
    if problems:
        raise ConfigError(problems).located(where)
    return config


def dry_run(config: dict, args, notes: list[str], warnings: list[str]) -> int:
    """What ``lem run --dry-run`` prints: the experiment's id and the values that differ from the defaults (what the
    id is derived from), as a campaign would measure it; nothing is measured."""
    from pathlib import Path

    from .campaign import current_form, read_yaml, sparse_config
    from .config import dotted_items, flow

    sparse = sparse_config(config)
    name = None
    if args.experiment:
        data = read_yaml(args.experiment)
        name = data.get("config_name") if isinstance(data, dict) else None
        name = name or Path(args.experiment).stem
    out = {
        "experiment_id": experiment_id(config, sparse),
        "config_name": name,
        "params": current_form(sparse),
        "notes": notes,
        "warnings": warnings,
    }
    if args.json or os.environ.get("LLM_ENERGY_JSON_OUTPUT", "").lower() in ("1", "true", "yes"):
        print(json.dumps(out, indent=1))
        return 0
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"experiment {out['experiment_id']}" + (f" ({name})" if name else ""))
    print("values that differ from the defaults (the id is derived from them):")
    for key, value in dotted_items(out["params"]):
        print(f"    {key}: {flow(value)}")
    print("dry run: nothing measured")
    return 0


def model_path_for(config: dict) -> str:
    from .paths import cache_dir
    from .tiny_model import build_tiny_llama, is_embedded

    name = config["model_name"]
    if not is_embedded(name):
        return name
    target = cache_dir() / "models" / name
    if not (target / "config.json").exists():
        build_tiny_llama(target)
    return str(target)


@contextlib.contextmanager
def _heartbeat(label: str, quiet: bool):
    """As in a workflow job (:mod:`.heartbeat`): a line whenever the console has shown nothing for a while, unless
    ``--quiet``."""
    from .heartbeat import Heartbeat

    if quiet:
        yield
        return
    beat = Heartbeat(label)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(beat.seen)
    try:
        with beat:
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(beat.seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llenergymeasure.run", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", help="experiment YAML/JSON file (experiment fields)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a (dotted) field")
    parser.add_argument("--cycle", type=int, default=1)
    parser.add_argument("--output", help="write the raw result here (validated, atomic)")
    parser.add_argument("--state-dir", help="thermal-gap state folder shared by consecutive runs")
    parser.add_argument("--config-gap", type=float, default=0.0, help="seconds between consecutive windows")
    parser.add_argument("--cycle-gap", type=float, default=0.0, help="seconds when the cycle changes")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--dry-run",
        "-n",
        action="store_true",
        help="resolve and check the experiment, print its id and non-default values; measure nothing",
    )
    parser.add_argument("--json", action="store_true", help="--dry-run: print JSON (also LLM_ENERGY_JSON_OUTPUT=1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    notes: list[str] = []
    try:
        config = load_experiment(args.experiment, args.set, notes)
        from .prompts import check_sources

        # the prompts and the model, before anything is loaded
        warnings = check_sources([config], network_optional=args.dry_run)
        if not args.quiet or args.dry_run:
            for line in notes:
                print(f"note: {line}", file=sys.stderr)
        if args.dry_run:
            return dry_run(config, args, notes, warnings)
    except ConfigError as exc:
        for line in problem_lines(exc, "Configuration error: "):
            print(line, file=sys.stderr)
        return 1
    from .measure import run_experiment
    from .process import select_gpus
    from .results import ResultExistsError

    gpus = select_gpus(config)  # the experiment's GPUs only, in PCI order, as in a workflow job
    if gpus and not args.quiet:
        logging.getLogger(__name__).info("GPUs: %s", gpus)
    exp_id = experiment_id(config)
    if args.output and os.path.lexists(args.output):
        print(
            f"Refused: {args.output} already exists: a finished measurement is never replaced (choose another --output)",
            file=sys.stderr,
        )
        return 1
    try:
        with _heartbeat(f"{exp_id} cycle {args.cycle}", args.quiet):
            result = run_experiment(
                config,
                exp_id,
                args.cycle,
                model_path_for(config),
                args.output,
                JobContext(state_dir=args.state_dir, config_gap_s=args.config_gap, cycle_gap_s=args.cycle_gap),
            )
    except (MeasurementError, ConfigError, ResultExistsError) as exc:  # a known cause, stated in one line
        print(f"Measurement error: {exc}", file=sys.stderr)
        return 1
    total = result["energy"]["total"]
    print(
        json.dumps(
            {
                "experiment_id": exp_id,
                "cycle": args.cycle,
                "window_duration_s": result["timestamps"]["window_duration_s"],
                "output_tokens": result["tokens"]["output_tokens"],
                "output_tokens_per_s": result["throughput"]["output_tokens_per_s"],
                "energy_j": total["gross_energy_j"],
                "energy_net_j": total["net_energy_j"],
                "energy_method": total["method"],
                "j_per_output_token": result["efficiency"]["j_per_output_token"],
                "flags": [f["code"] for f in result["flags"]],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
