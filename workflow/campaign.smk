# Start and end of a run. onstart (not called for dry runs): the results folder is held by this run, and
# another run on it, from any working directory, is refused before any job starts. onerror: after failed
# measurements, what completed is aggregated (summary, failures.json, gap audit, report, campaign notification);
# a rerun retries exactly the failed measurements (their raw results are the missing outputs).


onstart:
    lem.campaign_started(config)


onerror:
    lem.campaign_failed(config, workflow)
