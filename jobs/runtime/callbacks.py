"""Stateful callbacks: their state_dict() goes into the checkpoint under `callbacks[state_key]`.

CheckpointPolicy is a pure decision ("is a periodic checkpoint due now?") plus retention settings;
the session does the saving. EarlyStopping watches a metric after each validation.
"""
from __future__ import annotations

import json
import math

from traind.contract.errors import UsageError
from traind.store.policy import POLICY_FIELDS, check_policy_from


class Callback:
    @property
    def state_key(self) -> str:
        return type(self).__name__

    # Hooks (all optional). `trainer.should_stop = True` ends training normally (final checkpoint).
    def on_fit_start(self, trainer, module) -> None: ...
    def on_train_step_end(self, trainer, module, metrics: dict) -> None: ...
    def on_validation_end(self, trainer, module, metrics: dict) -> None: ...
    def on_epoch_end(self, trainer, module) -> None: ...

    monitor: str | None = None     # the metric a callback watches, if any (the Trainer warns if never logged)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CheckpointPolicy(Callback):
    """When to write periodic checkpoints and which to keep.

    every_steps / every_seconds (wall time since the last save in this process) / at_epoch_end;
    keep_last N, plus keep_best={"metric": "val_loss", "mode": "min", "k": 2}. Under a supervisor
    the spec's `checkpoint:` section ($TRAIND_CHECKPOINT) overrides the values given in code.
    """

    def __init__(self, every_steps: int | None = None, every_seconds: float | None = None,
                 at_epoch_end: bool = False, keep_last: int = 3, keep_best: dict | None = None) -> None:
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.at_epoch_end, self.keep_last, self.keep_best = at_epoch_end, keep_last, keep_best
        self.last_saved_step: int | None = None
        self._last_save_time = -math.inf
        self._validate("CheckpointPolicy")

    def start(self, now: float) -> None:
        """Start the every_seconds timer (called once training starts)."""
        self._last_save_time = now

    def due(self, step: int, *, epoch_ended: bool, now: float) -> bool:
        return self.due_by_count(step, epoch_ended=epoch_ended) or self.due_by_time(step, now)

    def due_by_count(self, step: int, *, epoch_ended: bool) -> bool:
        """every_steps / at_epoch_end: the same answer on every rank of a group."""
        if step == self.last_saved_step:
            return False
        return bool(self.every_steps and step % self.every_steps == 0) or bool(epoch_ended and self.at_epoch_end)

    def due_by_time(self, step: int, now: float) -> bool:
        """every_seconds, on this process's own clock (a group agrees on it first)."""
        return step != self.last_saved_step and bool(self.every_seconds and now - self._last_save_time >= self.every_seconds)

    def saved(self, step: int, now: float) -> None:
        self.last_saved_step, self._last_save_time = step, now

    @property
    def monitor(self) -> str | None:
        return (self.keep_best or {}).get("metric")

    def apply_overrides(self, raw_json: str, where: str = "$TRAIND_CHECKPOINT") -> list[str]:
        """Apply the spec's checkpoint section (JSON); unknown or mistyped fields are a UsageError.
        Returns one line per value the spec changed, saying which wins (the spec's)."""
        try:
            section = json.loads(raw_json)
        except ValueError as err:
            raise UsageError(f"{where}: not JSON: {err}") from None
        if not isinstance(section, dict):
            raise UsageError(f"{where}: expected an object, got {type(section).__name__}")
        known = ("every_steps", "every_seconds", "at_epoch_end", "keep_last", "keep_best")
        changed = []
        for key, value in section.items():
            if key not in known:
                raise UsageError(f"{where}: unknown field {key!r} (valid: {', '.join(known)})")
            if value is not None and value != getattr(self, key):   # null = not in the spec: the code's stays
                changed.append(f"checkpoint.{key}: the spec's {value!r} wins over {getattr(self, key)!r} "
                               "given in the code")
                setattr(self, key, value)
        self._validate(where)
        return changed

    def _validate(self, where: str) -> None:
        """The policy's one rule, the same the supervisor applies to the spec (traind.store.policy)."""
        checked = check_policy_from(where, {k: getattr(self, k) for k in POLICY_FIELDS})
        for key, value in checked.items():
            setattr(self, key, value)

    def state_dict(self) -> dict:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_saved_step = state.get("last_saved_step")


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` validations in a row."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.wait = 0
        self.stopped_step: int | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_validation_end(self, trainer, module, metrics: dict) -> None:
        if self.monitor not in metrics:
            return
        value = float(metrics[self.monitor])
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = trainer.global_step
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.stopped_step = state.get("stopped_step")
