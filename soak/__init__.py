"""``make soak``: the gateway with simulated devices for a bounded time under scheduled faults
(link drops, broker restarts, malformed notifications), reporting RSS and open file descriptors
over time and the readings lost (must be 0). Not part of ``make test``.

- :mod:`soak.schedule` — *pure*: the fault schedule from a seed and a duration;
- :mod:`soak.accounting` — *pure*: accepted / delivered / lost, RSS and fd figures, the verdict;
- :mod:`soak.run` — the runner over the end-to-end harness; ``python -m soak --minutes N``.
"""
