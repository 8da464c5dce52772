"""`traind.accelerate`: the integration for loops on Hugging Face accelerate, by its short name (torch-free until used).

`traind.accelerate.Checkpointing` (traind.jobs.adapters.accelerate) resolve on first
use, so importing this module imports neither torch nor accelerate (the supervisor side imports
every daemon module; tests/test_no_torch.py checks).
"""
from __future__ import annotations

import importlib

_TARGET = "traind.jobs.adapters.accelerate"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    value = getattr(importlib.import_module(_TARGET), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(importlib.import_module(_TARGET).__all__))
