"""`traind.hf`: the Hugging Face Transformers integration, by its short name (torch-free until used).

`traind.hf.Checkpointing` (traind.jobs.adapters.hf) resolve on first
use, so importing this module imports neither torch nor transformers (the supervisor side imports
every daemon module; tests/test_no_torch.py checks).
"""
from __future__ import annotations

import importlib

_TARGET = "traind.jobs.adapters.hf"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    value = getattr(importlib.import_module(_TARGET), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(importlib.import_module(_TARGET).__all__))
