# llenergymeasure: measure the energy, throughput and latency of LLM inference.
#
#   snakemake --cores 1                               the campaign in config/campaign.yaml
#   snakemake --cores 1 --config campaign=other.yaml  exactly that campaign (nothing of the default leaks in)
#
# Every experiment x cycle is one job writing results/<campaign>/raw/<experiment_id>/cycle_<n>.json. A failed
# measurement stops no other; what completed is aggregated, the failures are listed in failures.json. With a
# precision target, cycles continue per experiment until its interval is tight enough (workflow/precision.smk).
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/common.smk"


# Campaign loading and validation against schemas/campaign.schema.json (one-line error, no job started).
PLAN = load_plan()
LAYOUT = PLAN.layout  # every path of the campaign (llenergymeasure.record.layout)
MODELS_DIR = models_dir()


localrules:
    all,
    build_model,
    aggregate,
    thermal_gaps,
    notify_campaign,
    report_plots,
    decide,


include: "workflow/model.smk"
include: "workflow/measure.smk"
include: "workflow/precision.smk"
include: "workflow/aggregate.smk"
include: "workflow/notify.smk"
include: "workflow/report.smk"
include: "workflow/campaign.smk"


# Every raw result is an input of the target too: a raw result that is missing while the summary is up to date (a
# deleted damaged file, say) is then measured again (Snakemake looks for missing files of a job that is not
# itself rerun only among the inputs of the targets: snakemake/dag.py, update_needrun). With a precision target,
# so are the raw results beyond the minimum plan that the decisions taken so far have scheduled, and the decisions
# those raw results call for (one deleted is taken again).
rule all:
    default_target: True
    input:
        all_raw_results(),
        scheduled_raw_results(),
        settled_decisions(),
        LAYOUT.summary,
        LAYOUT.thermal_gaps,
        LAYOUT.campaign_notification,
        LAYOUT.report("efficiency"),
