# Start and end of a run. onstart (not called for dry runs): the results folder is held by this run, and
# another run on it, from any working directory, is refused before any job starts. onsuccess (after a run that ran
# jobs): the last lines say where the summary and the report are, and whether their energy is measured, estimated
# or mixed. onerror: after failed measurements, what completed is aggregated (summary, failures.json, gap audit,
# report, campaign notification); a rerun retries exactly the failed measurements (their raw results are the
# missing outputs).


onstart:
    lem.campaign_started(config)


onsuccess:
    lem.campaign_succeeded(config)


onerror:
    lem.campaign_failed(config, workflow)
