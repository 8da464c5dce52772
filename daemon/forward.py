"""Short names for the job side's framework integrations (`traind.lightning`, `traind.hf`,
`traind.accelerate`) that import nothing until a name is used: the supervisor side imports every
daemon module, and must stay free of torch and of the frameworks (tests/test_no_torch.py)."""
from __future__ import annotations

import importlib


def forward_to(target: str, namespace: dict):
    """(__getattr__, __dir__) for a module whose names resolve in `target` on first use."""
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(target), name)
        namespace[name] = value
        return value

    def __dir__():
        module = importlib.import_module(target)
        return sorted(set(namespace) | set(getattr(module, "__all__", None) or
                                          [n for n in vars(module) if not n.startswith("_")]))
    return __getattr__, __dir__
