"""The state schema: the one owner of what a checkpoint holds, for every way in.

The named parts of a checkpoint (the Lightning-compatible ones first, so that
`LitModule.load_from_checkpoint` and `pytorch_lightning.Trainer.fit(ckpt_path=...)` accept it):
  epoch, global_step, state_dict, optimizer_states, lr_schedulers, callbacks, hyper_parameters,
  hparams_name, datamodule_hyper_parameters, datamodule_state, MixedPrecision (the scaler),
  pytorch-lightning_version, loops (Lightning's loop progress, built here without Lightning);
and what exact resume adds (resume_parts): rng_states, data_position, `traind` (traind's own
counters: global_step, epoch, batches_consumed, last_metrics), user_state, traind_version.

build() makes it from a Session's live objects, apply() loads it back, rank_part() is what a
sharded checkpoint keeps per rank (the tensors of TENSOR_KEYS go through DCP), resume_parts()
is what an adapter adds to its framework's own checkpoint (the Lightning callback calls it).
Stdlib and traind only: Lightning need not be installed.

Lightning's `loops` have two shapes, the two a Lightning checkpoint taken at a step boundary has:
- mid-epoch (`batches_consumed > 0`): as saved at the end of a training batch, which Lightning
  resumes with the next batch of the same epoch;
- at an epoch boundary (`batches_consumed == 0`): `epoch` epochs done, the next one not begun.
"""
from __future__ import annotations

import copy

from traind import __version__
from traind.contract.errors import UsageError
from .data import DataPosition
from .rng import capture_rng, restore_rng

TENSOR_KEYS = ("state_dict", "optimizer_states")     # a group's sharded tensors (DCP); the rest is per rank
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


def counters_entry(global_step: int, epoch: int, batches_consumed: int, last_metrics: dict, **more) -> dict:
    """traind's counters, as every way in writes them (under COUNTERS_KEY)."""
    return {"global_step": int(global_step), "epoch": epoch, "batches_consumed": int(batches_consumed),
            "last_metrics": dict(last_metrics), **more}


def resume_parts(position: DataPosition, counters_: dict, rng_states=None) -> dict:
    """What exact resume needs beyond the framework's own checkpoint: RNG states, data position,
    traind's counters and version."""
    return {"rng_states": capture_rng() if rng_states is None else rng_states,
            "data_position": position.state_dict(), COUNTERS_KEY: counters_, "traind_version": __version__}


def rank_part(state: dict) -> dict:
    """A rank's own part of a sharded checkpoint: everything but the tensors DCP holds."""
    return {k: v for k, v in state.items() if k not in TENSOR_KEYS}


def build(session) -> dict:
    """The whole checkpoint of a Session (or anything with its fields) at its current step."""
    dm, position = session.datamodule, session.position
    return {
        "epoch": position.epoch,
        "global_step": session.step,
        "state_dict": session.model.state_dict() if session.model is not None else {},
        "optimizer_states": [o.state_dict() for o in session.optimizers],
        "lr_schedulers": [s.state_dict() for s in session.schedulers],
        "callbacks": {cb.state_key: cb.state_dict() for cb in session.callbacks},
        "hyper_parameters": copy.deepcopy(session.hyper_parameters),
        "hparams_name": session.hparams_name,
        "datamodule_hyper_parameters": copy.deepcopy(dict(dm.hparams)) if dm is not None else {},
        "datamodule_state": dm.state_dict() if dm is not None else {},
        "MixedPrecision": session.scaler.state_dict() if session.scaler is not None else {},
        VERSION_KEY: LIGHTNING_SCHEMA_VERSION,
        "loops": loops_state(session.step, position.epoch, position.batches_consumed),
        "user_state": copy.deepcopy(session.state),
        **resume_parts(position, counters_entry(
            session.step, position.epoch, position.batches_consumed, session.last_metrics,
            **({"boundary_pending": copy.deepcopy(session.boundary_pending)} if session.boundary_pending else {}))),
    }


def apply(session, state: dict, where: str = "checkpoint") -> None:
    """Load every part of a checkpoint into the live objects; the RNG states go last.

    A checkpoint that does not fit (another model, another program) is a UsageError: exit 2,
    which the supervisor does not retry, since every attempt would resume from the same one."""
    def check_count(key, live):
        stored = state.get(key) or []
        if len(stored) != len(live):
            raise UsageError(f"{where}: field '{key}' holds {len(stored)} entries, "
                             f"this job has {len(live)}; the job's code does not match the checkpoint")
        return stored
    sharded = state.get("sharded") if session.group is not None else None   # tensors loaded already (DCP)
    def load_into(key, target, value):
        try:
            target.load_state_dict(value)
        except (RuntimeError, ValueError, KeyError) as err:   # another model, another optimizer
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"{where}: field '{key}' does not fit this job ({first})") from None
    needed = ("global_step", "data_position", "rng_states") + (("state_dict",) if session.model and not sharded else ())
    missing = [key for key in needed if key not in state] if isinstance(state, dict) else ["global_step"]
    if missing:
        raise UsageError(f"{where}: field '{missing[0]}' is missing; not a checkpoint of a traind.Session or Trainer")
    if session.model is not None and not sharded:
        load_into("state_dict", session.model, state["state_dict"])
    for i, (opt, s) in enumerate(zip(session.optimizers, [] if sharded else check_count("optimizer_states",
                                                                                        session.optimizers))):
        load_into(f"optimizer_states[{i}]", opt, s)
    for i, (sched, s) in enumerate(zip(session.schedulers, check_count("lr_schedulers", session.schedulers))):
        load_into(f"lr_schedulers[{i}]", sched, s)
    if session.scaler is not None and state.get("MixedPrecision"):
        load_into("MixedPrecision", session.scaler, state["MixedPrecision"])
    stored_callbacks = state.get("callbacks") or {}
    for cb in session.callbacks:
        if cb.state_key in stored_callbacks:
            cb.load_state_dict(stored_callbacks[cb.state_key])
    if session.datamodule is not None:
        session.datamodule.load_state_dict(state.get("datamodule_state") or {})
    session.state.clear()
    session.state.update(state.get("user_state") or {})
    session.step = int(state["global_step"])
    session.position = DataPosition.from_state(state["data_position"])
    if sharded and sharded["saved_world_size"] != session.group.world_size:   # resharded: same samples seen
        session.position.resharded(sharded["saved_world_size"], session.group.world_size)
    session.last_metrics = dict(counters(state).get("last_metrics") or {})
    pending = counters(state).get("boundary_pending")
    session.boundary_pending = dict(pending) if isinstance(pending, dict) else None
    restore_rng(state["rng_states"])
