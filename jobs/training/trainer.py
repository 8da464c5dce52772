"""Trainer: the Lightning-style loop on top of Session (which owns checkpoints and stop requests).

One optimizer step = one "global step". Order at each step boundary, fixed so that a checkpoint
always captures a consistent state: optimizer step -> per-step schedulers -> validation (if due)
-> epoch end (per-epoch schedulers, callbacks) -> callbacks -> Session.step_done (metrics line,
maybe a periodic save) -> stop check.
"""
from __future__ import annotations

import torch

from ..runtime.callbacks import Callback, CheckpointPolicy
from .datamodule import train_loader
from .optim import parse_optimizers
from .precision import Precision
from ..runtime.reporting import Console
from ..runtime.group import data_parallel_step
from ..runtime.rng import capture_rng, restore_rng
from ..runtime.session import Session


def move_to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def _loss_of(output, where: str) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{where} must return a loss tensor or a dict with 'loss', got {type(output).__name__}")
    return loss


class ValidationInterrupted(Exception):
    """A stop arrived during validation; it runs again, whole, on resume."""


class Trainer:
    def __init__(self, *, max_steps: int | None = None, max_epochs: int | None = None,
                 precision: str = "32", accumulate_grad_batches: int = 1,
                 gradient_clip_val: float | None = None, val_check_interval: int | None = None,
                 limit_val_batches: int | None = None, callbacks: list[Callback] = (),
                 run_dir=None, checkpoint_every_steps: int | None = None,
                 checkpoint_every_seconds: float | None = None, checkpoint_at_epoch_end: bool = False,
                 keep_last: int = 3, keep_best: dict | None = None, log_every_n_steps: int = 50,
                 accelerator: str = "auto") -> None:
        if max_steps is None and max_epochs is None:
            raise ValueError("Trainer needs max_steps or max_epochs")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.accumulate = accumulate_grad_batches
        self.clip_val, self.val_check_interval = gradient_clip_val, val_check_interval
        self.limit_val_batches = limit_val_batches
        self.callbacks = list(callbacks)
        policy = next((c for c in self.callbacks if isinstance(c, CheckpointPolicy)), None)
        if policy is None:
            policy = CheckpointPolicy(checkpoint_every_steps, checkpoint_every_seconds,
                                      checkpoint_at_epoch_end, keep_last, keep_best)
            self.callbacks.insert(0, policy)
        self.policy, self.run_dir, self.log_every_n_steps = policy, run_dir, log_every_n_steps
        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(accelerator)
        self.precision = Precision(precision, self.device.type)
        self.should_stop = False      # callbacks (early stopping) set it: normal end, final checkpoint
        self.session: Session | None = None
        self._in_boundary = False
        self.callback_metrics: dict = {}

    @property
    def global_step(self) -> int:
        """Optimizer steps done (inside the step boundary: including the one that just finished)."""
        if self.session is None:
            return 0
        return self.session.step + (1 if self._in_boundary else 0)

    @property
    def current_epoch(self) -> int:
        return self.session.position.epoch if self.session is not None else 0

    def fit(self, module, datamodule) -> None:
        """Train until max_steps/max_epochs or a callback stops it. A stop request ends the process
        with exit 75 after the emergency checkpoint (a `Preempted`, i.e. SystemExit)."""
        module.to(self.device)
        module.trainer = self
        optimizers, schedulers = parse_optimizers(module.configure_optimizers())
        datamodule.setup("fit")
        self.session = Session(
            self.run_dir, model=module, optimizers=optimizers,
            schedulers=[s.scheduler for s in schedulers], scaler=self.precision.scaler,
            max_steps=self.max_steps, policy=self.policy, callbacks=self.callbacks,
            datamodule=datamodule, hyper_parameters=module.hparams,
            hparams_name=type(module).__qualname__,
            console=Console(self.max_steps, every_steps=self.log_every_n_steps))
        # In a group the training step runs through DDP (gradients averaged over the ranks); the
        # Session keeps the unwrapped module, so checkpoints carry its own parameter names.
        self._train_step = module.training_step if self.session.group is None else data_parallel_step(module)
        with self.session:
            for cb in self.callbacks:
                cb.on_fit_start(self, module)
            self._fit_loop(module, datamodule, optimizers, schedulers)
        module.trainer = None

    def _epochs_done(self) -> bool:
        return self.max_epochs is not None and self.session.position.epoch >= self.max_epochs

    def _fit_loop(self, module, datamodule, optimizers, schedulers) -> None:
        session = self.session
        params = [p for group in (o.param_groups for o in optimizers) for g in group for p in g["params"]]
        if session.boundary_pending is not None:   # resumed from a stop in the middle of a step's boundary
            pending = session.boundary_pending
            if not self._finish_step(module, datamodule, optimizers, schedulers, pending["metrics"],
                                     pending["epoch_ended"], resumed=True):
                return
        while not (session.should_stop() or self.should_stop or self._epochs_done()):
            loader = train_loader(datamodule, session.position, session.group)
            total = loader.batch_sampler.batches_per_epoch()
            consumed = session.position.batches_consumed
            micro_losses: list[float] = []
            module.train()
            for batch, epoch_ended in session.consume(loader):
                batch = move_to(batch, self.device)
                with self.precision.autocast():
                    loss = _loss_of(self._train_step(batch, consumed), "training_step")
                self.precision.backward(loss / self.accumulate)
                micro_losses.append(loss.detach().float().item())
                consumed += 1
                if consumed % self.accumulate and not epoch_ended:
                    continue            # accumulating: no step boundary here
                self.precision.step(optimizers, params, self.clip_val)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                train_metrics = {"loss": sum(micro_losses) / len(micro_losses), **module.pop_logged(),
                                 "lr": optimizers[0].param_groups[0]["lr"]}
                micro_losses.clear()
                if not self._finish_step(module, datamodule, optimizers, schedulers, train_metrics, epoch_ended):
                    return
            if consumed < total:      # the loader ended early (it never does unless the data shrank)
                break

    def _finish_step(self, module, datamodule, optimizers, schedulers, train_metrics: dict,
                     epoch_ended: bool, resumed: bool = False) -> bool:
        """The boundary after an optimizer step, then the step reported; False when training ends
        here. A stop during the boundary's validation (single process) counts the step and leaves
        the boundary pending in the emergency checkpoint; the resumed run finishes it (resumed)."""
        self._in_boundary = not resumed
        try:
            metrics = self._step_boundary(module, datamodule, schedulers, dict(train_metrics), epoch_ended,
                                          resumed=resumed)
        except ValidationInterrupted:
            self.session.step_interrupted(train_metrics, epoch_ended=epoch_ended)
            self.session.console.line(f"stop requested during the validation after step {self.session.step}: "
                                      "it runs again on resume")
            return False
        finally:
            self._in_boundary = False
        self.session.step_done(metrics, epoch_ended=epoch_ended)
        return not (self.session.should_stop() or self.should_stop)

    def _step_boundary(self, module, datamodule, schedulers, metrics: dict, epoch_ended: bool,
                       resumed: bool = False) -> dict:
        step = self.global_step               # the step that just finished
        for cfg in schedulers if not resumed else ():   # a resumed boundary: stepped before the stop
            if cfg.interval == "step":
                cfg.maybe_step(count=step, metrics={**self.callback_metrics, **metrics})
        val_due = (self.val_check_interval and step % self.val_check_interval == 0) or \
                  (epoch_ended and not self.val_check_interval)
        has_val = datamodule.val_dataset() is not None
        if val_due and has_val:
            metrics.update(self._validate(module, datamodule))
            for cb in self.callbacks:
                cb.on_validation_end(self, module, metrics)
        self.callback_metrics.update(metrics)
        if (val_due and has_val) or (epoch_ended and not has_val):   # where a watched metric shows up
            self._warn_unlogged_monitors()
        if epoch_ended:
            finished_epochs = self.session.position.epoch + 1
            for cfg in schedulers:
                if cfg.interval == "epoch":
                    cfg.maybe_step(count=finished_epochs, metrics=self.callback_metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(self, module)
        for cb in self.callbacks:
            cb.on_train_step_end(self, module, metrics)
        return metrics

    def _warn_unlogged_monitors(self) -> None:
        """keep_best / EarlyStopping watching a metric nobody logs silently do nothing: say so,
        once, after the first validation or epoch end (where a validation metric would appear)."""
        if getattr(self, "_monitors_checked", False):
            return
        self._monitors_checked = True
        for cb in self.callbacks:
            metric = cb.monitor if isinstance(cb.monitor, str) else None
            if metric and metric not in self.callback_metrics:
                self.session.console.line(
                    f"warning: {type(cb).__name__} watches {metric!r}, which is never logged "
                    f"(logged: {', '.join(sorted(self.callback_metrics)) or 'nothing'}); it does nothing. "
                    "Log it with self.log() in training_step or validation_step")

    @torch.no_grad()
    def _validate(self, module, datamodule) -> dict:
        loader = datamodule.val_dataloader()
        module.eval()
        module.pop_logged()           # training metrics were already taken
        rng = capture_rng()           # a validation cut short must leave no trace in the training state
        cut_at = None
        for index, batch in enumerate(loader):
            if self.limit_val_batches is not None and index >= self.limit_val_batches:
                break
            if self.session.stop_now():
                cut_at = index
                break
            with self.precision.autocast():
                module.validation_step(move_to(batch, self.device), index)
        module.train()
        logged = module.pop_logged()
        if self.session.cut_short(cut_at is not None):     # here, or on another rank of the group
            restore_rng(rng)
            raise ValidationInterrupted(cut_at)
        return logged
