# Helper functions of the workflow: each one is a one-liner into the llenergymeasure package.
#
# The contract with the package (llenergymeasure/workflow.py): `config` stays as Snakemake loaded it; the rules
# read the campaign through PLAN (load_plan); what jobs need outside their params is config["_lem"], a read-only
# mapping of the campaign's runtime facts (llenergymeasure.runtime.Runtime), the only key added to `config`;
# every path comes from LAYOUT (llenergymeasure.record.layout).
import llenergymeasure.workflow as lem


def load_plan():
    # `python` in every image, vLLM's official one included
    lem.container_path(workflow.basedir)
    return lem.load(
        config, workflow.overwrite_configfiles, announce=workflow.is_main_process
    )


def models_dir():
    return lem.models_dir(PLAN)


def all_cores():
    return lem.all_cores(workflow)


def measure_gpus(wildcards):
    return lem.gpus(PLAN, wildcards.experiment)


def measure_container(wildcards):
    return lem.container(PLAN, wildcards.experiment)


def measure_inputs(wildcards):
    return lem.model_input(PLAN, wildcards.experiment)


def measure_params(wildcards):
    return lem.experiment_config(PLAN, wildcards.experiment)


def measure_priority(wildcards):
    return lem.priority(PLAN, wildcards.experiment, wildcards.cycle)


def config_names():
    return lem.config_names(PLAN)


def analysis_params():
    return lem.analysis(PLAN)


def aggregated_results():
    return lem.aggregated(PLAN)


def all_raw_results():
    return lem.all_raw(PLAN)


def report_caption(name):
    return lem.report_caption(PLAN, name)


def report_captions():
    return lem.report_captions(PLAN)


def aggregate_inputs(wildcards):
    return lem.aggregate_inputs(PLAN, checkpoints)


def analysis_stamp(wildcards):
    return lem.analysis_stamp(PLAN)


def scheduled_raw_results():
    return lem.scheduled_raw(PLAN)


def settled_decisions():
    return lem.settled_decisions(PLAN)


def decision_inputs(wildcards):
    return lem.decision_inputs(PLAN, wildcards.experiment, wildcards.n)


def decision_priority():
    return lem.decision_priority(PLAN)


def precision_params():
    return lem.precision_params(PLAN)


lem.fixed_signatures(
    measure_container,
    measure_gpus,
    measure_inputs,
    measure_params,
    measure_priority,
    decision_inputs,
    aggregate_inputs,
    analysis_stamp,
)
