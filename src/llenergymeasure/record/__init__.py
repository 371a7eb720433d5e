"""What a measurement leaves behind, each concept in one place.

- :mod:`.layout`: where every file of a campaign lies (raw result, timeline sidecar, decision, aggregated result,
  summary, failures, logs, report) and what a path names.
- :mod:`.metrics`: every metric of the aggregated results and the summary: name, unit, how to read it from a raw
  result, which way is better, and where it is used (CV, precision target, summary, ``lem compare``).
- :mod:`.flags`: every validity flag: its code, scope, meaning and the rule that raises it.
- :mod:`.token_times`: each request's token arrivals, kept in a sidecar beside the raw result, and the ITL
  distribution derived again from them.

Each module needs only the standard library: a measurement job inside a stock engine image imports them too.
"""
