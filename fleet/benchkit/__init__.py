"""`fleet bench`: Fleet's figures measured next to their ceilings, in one run.

Modules: `measure` (rates and percentiles), `ceiling` (raw Redis with redis-py),
`noop` (echo jobs end to end), `embed` (the model through the fleet and called
directly), `memory` (worker RSS and the model's own footprint), `harness` (a
private redis-server and fleet, the run's order) and `report` (ratios, targets,
the table).
"""
