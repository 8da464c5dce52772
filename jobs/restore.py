"""Loading a checkpoint's state into a Session's live objects (model, optimizers, schedulers,
scaler, callbacks, datamodule, user state, data position, RNG), with one-line errors for a
checkpoint that does not fit the job. A sharded checkpoint's tensors are in place already (DCP
loaded them): only the rank's own state is applied here."""
from __future__ import annotations

from traind.contract.errors import UsageError
from traind.jobs.data import DataPosition
from traind.jobs.lightning import schema as lightning_schema
from traind.jobs.rng import restore_rng


def apply_state(session, state: dict, where: str = "checkpoint") -> None:
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
        seen = session.position.batches_consumed * sharded["saved_world_size"]
        session.position.batches_consumed = seen // session.group.world_size
    session.last_metrics = dict(lightning_schema.counters(state).get("last_metrics") or {})
    restore_rng(state["rng_states"])
