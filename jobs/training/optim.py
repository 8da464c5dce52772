"""configure_optimizers() output -> optimizers + scheduler configs, and when each scheduler steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch

INTERVALS = ("step", "epoch")


@dataclass
class SchedulerConfig:
    scheduler: object
    interval: str = "epoch"      # Lightning's default
    frequency: int = 1
    monitor: str | None = None   # for ReduceLROnPlateau-like schedulers: step(metrics[monitor])

    def maybe_step(self, *, count: int, metrics: dict) -> None:
        """Step if `count` (finished steps or epochs) is a multiple of the frequency."""
        if count % self.frequency:
            return
        if self.monitor is not None:
            if self.monitor in metrics:
                self.scheduler.step(metrics[self.monitor])
            return
        self.scheduler.step()


def _scheduler_config(value) -> SchedulerConfig:
    if isinstance(value, dict):
        unknown = set(value) - {"scheduler", "interval", "frequency", "monitor", "name", "strict"}
        if unknown or "scheduler" not in value:
            raise TypeError(f"lr_scheduler dict needs 'scheduler' (and optionally interval, frequency, "
                            f"monitor); got keys {sorted(value)}")
        cfg = SchedulerConfig(value["scheduler"], value.get("interval", "epoch"),
                              int(value.get("frequency", 1)), value.get("monitor"))
    else:
        cfg = SchedulerConfig(value)
    if cfg.interval not in INTERVALS:
        raise TypeError(f"lr_scheduler interval must be 'step' or 'epoch', got {cfg.interval!r}")
    if cfg.frequency < 1:
        raise TypeError(f"lr_scheduler frequency must be >= 1, got {cfg.frequency}")
    return cfg


def parse_optimizers(conf) -> tuple[list[torch.optim.Optimizer], list[SchedulerConfig]]:
    """Accepts the forms documented on TrainModule.configure_optimizers."""
    if isinstance(conf, torch.optim.Optimizer):
        return [conf], []
    if isinstance(conf, dict):
        conf = [conf]
    if isinstance(conf, tuple) and len(conf) == 2 and isinstance(conf[0], (list, tuple)):
        opts, scheds = conf
        return _check_optimizers(list(opts)), [_scheduler_config(s) for s in _listify(scheds)]
    if isinstance(conf, (list, tuple)):
        opts, scheds = [], []
        for item in conf:
            if isinstance(item, dict):
                opts.append(item["optimizer"])
                if item.get("lr_scheduler") is not None:
                    scheds.append(_scheduler_config(item["lr_scheduler"]))
            else:
                opts.append(item)
        return _check_optimizers(opts), scheds
    raise TypeError(f"configure_optimizers() returned a {type(conf).__name__}; expected an optimizer, "
                    "a list of them, (optimizers, schedulers), or {'optimizer': ..., 'lr_scheduler': ...}")


def _listify(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_optimizers(opts: list) -> list:
    if not opts:
        raise TypeError("configure_optimizers() returned no optimizer")
    for opt in opts:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"configure_optimizers(): {type(opt).__name__} is not a torch.optim.Optimizer")
    return opts
