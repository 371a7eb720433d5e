# llenergymeasure: measure the energy, throughput and latency of LLM inference.
#
#   snakemake --cores 1                          the campaign in config/campaign.yaml
#   snakemake --cores 1 --configfile other.yaml  exactly that campaign (nothing of the default leaks in)
#
# Every experiment x cycle is one job writing results/<campaign>/raw/<experiment_id>/cycle_<n>.json.
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/common.smk"


# Campaign loading and validation against schemas/campaign.schema.json (one-line error, no job started).
PLAN = load_plan()
ROOT = PLAN.results_root
MODELS_DIR = models_dir()


localrules:
    all,
    build_model,
    aggregate,
    thermal_gaps,
    notify_campaign,
    report_plots,


include: "workflow/model.smk"
include: "workflow/measure.smk"
include: "workflow/aggregate.smk"
include: "workflow/notify.smk"
include: "workflow/report.smk"
include: "workflow/campaign.smk"


rule all:
    default_target: True
    input:
        f"{ROOT}/summary.csv",
        f"{ROOT}/thermal_gaps.json",
        f"{ROOT}/notifications/campaign_complete.json",
        f"{ROOT}/report/efficiency.svg",
