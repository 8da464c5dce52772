"""The job runtime: the lifecycle every way in shares (session.py, lifecycle.py), stop requests
(preemption.py, control.py), the group's agreement (group.py), the state schema (schema.py),
the data position (data.py), RNG capture (rng.py) and reporting (reporting.py, savecost.py)."""
