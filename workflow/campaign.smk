# Start of a run (onstart is not called for dry runs): the results folder is held by this run, and another run on
# it, from any working directory, is refused before any job starts.


onstart:
    lem.campaign_started(config)
