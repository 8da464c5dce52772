"""Lightning's checkpoint schema, written without Lightning: what its loader needs from state.pt.

`traind.Trainer` and `Session` checkpoints carry these keys so that `LitModule.load_from_checkpoint`
and `pytorch_lightning.Trainer.fit(ckpt_path=...)` accept them: `pytorch-lightning_version` (its
migration code reads it) and `loops` in the shape Lightning's loops save and restore (their
progress counters). traind's own counters live under `traind` (see `COUNTERS_KEY`), never in
`loops`. Stdlib only: Session imports this, and Lightning need not be installed.

Two shapes, the two a Lightning checkpoint taken at a step boundary has:
- mid-epoch (`batches_consumed > 0`): as saved at the end of a training batch, which Lightning
  resumes with the next batch of the same epoch;
- at an epoch boundary (`batches_consumed == 0`): `epoch` epochs done, the next one not begun.
"""
from __future__ import annotations

# The schema these loops follow; no migration of Lightning 2.x runs on it (they start at <2.0).
LIGHTNING_SCHEMA_VERSION = "2.0.0"
VERSION_KEY = "pytorch-lightning_version"
COUNTERS_KEY = "traind"      # traind's own counters: global_step, epoch, batches_consumed, last_metrics


def _counts(n: int, keys=("ready", "started", "processed", "completed")) -> dict:
    return {k: int(n) for k in keys}


def _progress(total: dict, current: dict, **extra) -> dict:
    return {"total": total, "current": current, **extra}


def fit_loop_state(global_step: int, epoch: int, batches_consumed: int) -> dict:
    """`loops["fit_loop"]` after `global_step` optimizer steps, in epoch `epoch`, with
    `batches_consumed` batches of it done. Batch totals across epochs are not known here; they are
    given as the step count (exact without gradient accumulation), which Lightning uses only for
    logging and for iteration-based validation intervals."""
    step, epoch, done = int(global_step), int(epoch), int(batches_consumed)
    mid_epoch = done > 0
    if mid_epoch:    # the batch-end shape: that batch is processed, its `completed` not yet counted
        def batches(n):
            return {**_counts(n), "completed": max(n - 1, 0)}
        epochs = {**_counts(epoch + 1), "processed": epoch, "completed": epoch}
        stepped = max(step - 1, 0)
        current_batches, total_batches = done, max(step, done)
    else:            # the epoch-start shape: `epoch` epochs fully done, nothing of the next
        def batches(n):
            return _counts(n)
        epochs = _counts(epoch)
        stepped = step
        current_batches, total_batches = 0, step
    step_progress = _progress(_counts(step, ("ready", "completed")),
                              _counts(min(step, current_batches), ("ready", "completed")))
    zero_grad = _progress(_counts(step, ("ready", "started", "completed")),
                          _counts(min(step, current_batches), ("ready", "started", "completed")))
    idle = _progress(_counts(0), _counts(0), is_last_batch=False)
    return {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
        "epoch_loop.batch_progress": _progress(batches(total_batches), batches(current_batches),
                                               is_last_batch=False),
        "epoch_loop.scheduler_progress": _progress(_counts(step, ("ready", "completed")),
                                                   _counts(min(step, current_batches), ("ready", "completed"))),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {"step": step_progress, "zero_grad": zero_grad}},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(
            _counts(0, ("ready", "completed")), _counts(0, ("ready", "completed"))),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": idle,
        "epoch_progress": _progress(dict(epochs), dict(epochs)),
    }


def loops_state(global_step: int, epoch: int, batches_consumed: int) -> dict:
    """The whole `loops` entry: the fit loop's progress, the other loops idle."""
    def idle(last_batch=True):
        extra = {"is_last_batch": False} if last_batch else {}
        return {"state_dict": {}, "batch_progress": _progress(_counts(0), _counts(0), **extra)}
    return {"fit_loop": fit_loop_state(global_step, epoch, batches_consumed),
            "validate_loop": idle(), "test_loop": idle(), "predict_loop": idle(last_batch=False)}


def counters(state: dict) -> dict:
    """traind's counters of a state.pt: under `traind`, or, in checkpoints written before it
    existed, under `loops` (which then held them instead of Lightning's loops)."""
    ours = state.get(COUNTERS_KEY)
    if isinstance(ours, dict):
        return ours
    legacy = state.get("loops")
    if isinstance(legacy, dict) and "fit_loop" not in legacy:
        return legacy
    return {}
