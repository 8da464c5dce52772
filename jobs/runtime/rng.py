"""Every random number generator the job draws from, captured and restored as plain types.

Stored under `rng_states` in state.pt; everything here loads with torch.load(weights_only=True)
(numpy's state array becomes a list of ints).
"""
from __future__ import annotations

import os
import random

import torch

try:  # numpy is optional for jobs; its global RNG is captured when it is importable
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed in CI
    np = None


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch (every device). Returns the seed for logging."""
    seed = int(seed)
    random.seed(seed)
    if np is not None:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)   # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)   # inherited by DataLoader workers
    return seed


def capture_rng() -> dict:
    states: dict = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = {"kind": kind, "keys": keys.tolist(), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict) -> None:
    random.setstate(_as_tuples(states["python"]))
    torch.set_rng_state(states["torch"])
    if np is not None and "numpy" in states:
        n = states["numpy"]
        np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        cuda_states = states["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            # A different GPU count cannot continue bit-for-bit; restore what matches.
            print(f"traind: checkpoint has {len(cuda_states)} CUDA RNG states, "
                  f"this host has {torch.cuda.device_count()} devices; resume is not exact")
        for index, state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)


def _as_tuples(value):
    """random.setstate wants nested tuples; a round trip through other serializers gives lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
