# Campaign-level notifications (per-measurement ones are sent by the measurement job itself).
rule notify_campaign:
    input:
        summary=f"{ROOT}/summary.csv",
        thermal=f"{ROOT}/thermal_gaps.json",
    output:
        f"{ROOT}/notifications/campaign_complete.json",
    log:
        f"{ROOT}/logs/notify_campaign.log",
    conda:
        "../envs/llenergymeasure.yaml"
    script:
        "../scripts/notify_campaign.py"
