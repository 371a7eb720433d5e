# Campaign-level notifications (per-measurement ones are sent by the measurement job itself).
rule notify_campaign:
    input:
        summary=LAYOUT.summary,
        thermal=LAYOUT.thermal_gaps,
    output:
        LAYOUT.campaign_notification,
    log:
        LAYOUT.log("notify_campaign"),
    conda:
        "../envs/llenergymeasure.yaml"
    script:
        "../scripts/notify_campaign.py"
