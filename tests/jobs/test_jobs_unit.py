"""Fast in-process tests of the job side's pure parts (no training processes)."""
import io
import json
import random
import socket
import time

import pytest
import torch

from traind.contract import protocol
from traind.contract.errors import UsageError
from traind.jobs.runtime.callbacks import CheckpointPolicy, EarlyStopping
from traind.jobs.runtime.control import ControlChannel
from traind.jobs.runtime.data import DataPosition, EpochBatchSampler, resumable_loader
from traind.jobs.training.hparams import HyperparameterError, HyperparametersMixin
from traind.jobs.training.optim import parse_optimizers
from traind.jobs.runtime.preemption import StopFlags
from traind.jobs.runtime.reporting import MetricsLog, read_metrics
from traind.jobs.runtime.rng import capture_rng, restore_rng
from traind.jobs.runtime.session import Event, Phase, transition


def test_sampler_skips_consumed_batches_by_index():
    full = list(EpochBatchSampler(100, 8, seed=3, epoch=2))
    resumed = list(EpochBatchSampler(100, 8, seed=3, epoch=2, start_batch=5))
    assert resumed == full[5:] and len(full) == 13
    assert sorted(i for b in full for i in b) == list(range(100))
    assert full != list(EpochBatchSampler(100, 8, seed=3, epoch=3)), "epochs must reshuffle"
    assert len(list(EpochBatchSampler(100, 8, drop_last=True))) == 12


def test_sampler_order_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(EpochBatchSampler(50, 4, seed=1))
    assert torch.equal(before, torch.get_rng_state())


def test_loader_with_workers_gives_the_same_batches_and_leaves_the_rng_alone():
    data = torch.utils.data.TensorDataset(torch.arange(40).float())
    pos = DataPosition(epoch=1, shuffle_seed=9, batches_consumed=2)
    before = torch.get_rng_state()
    plain = [b[0].tolist() for b in resumable_loader(data, 4, position=pos)]
    workers = [b[0].tolist() for b in resumable_loader(data, 4, position=pos, num_workers=2)]
    assert plain == workers and len(plain) == 8
    assert torch.equal(before, torch.get_rng_state())


def test_rng_states_round_trip_through_weights_only_load():
    import numpy as np
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    buf = io.BytesIO()
    torch.save({"rng": capture_rng()}, buf)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    buf.seek(0)
    restore_rng(torch.load(buf, weights_only=True)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


class _Model(HyperparametersMixin):
    def __init__(self, width, depth=2, *, act="relu", layers=(1, 2), extra=None, **kw):
        self.save_hyperparameters(ignore=["extra"])


def test_save_hyperparameters_records_plain_init_arguments():
    m = _Model(8, act="gelu", extra=object(), scale=0.5)
    assert m.hparams == {"width": 8, "depth": 2, "act": "gelu", "layers": (1, 2), "scale": 0.5}


def test_save_hyperparameters_refuses_what_weights_only_cannot_load():
    class Strict(HyperparametersMixin):
        def __init__(self, extra):
            self.save_hyperparameters()
    with pytest.raises(HyperparameterError, match=r"Strict hyperparameter 'extra' is a device.*ignore="):
        Strict(extra=torch.device("cpu"))


def test_configure_optimizers_forms():
    p = [torch.nn.Parameter(torch.zeros(2))]
    q = [torch.nn.Parameter(torch.zeros(2))]
    a, b = torch.optim.SGD(p, lr=0.1), torch.optim.SGD(q, lr=0.1)
    s = torch.optim.lr_scheduler.StepLR(a, 1)
    assert parse_optimizers(a) == ([a], [])
    opts, scheds = parse_optimizers(([a, b], [s]))
    assert opts == [a, b] and scheds[0].scheduler is s and scheds[0].interval == "epoch"
    opts, scheds = parse_optimizers([{"optimizer": a, "lr_scheduler": {"scheduler": s, "interval": "step"}},
                                     {"optimizer": b}])
    assert opts == [a, b] and scheds[0].interval == "step"
    with pytest.raises(TypeError, match="interval"):
        parse_optimizers({"optimizer": a, "lr_scheduler": {"scheduler": s, "interval": "batch"}})
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        parse_optimizers([a, "sgd"])


def test_checkpoint_policy_decisions():
    policy = CheckpointPolicy(every_steps=10, every_seconds=60, at_epoch_end=True)
    policy.start(now=0.0)
    assert not policy.due(3, epoch_ended=False, now=1.0)
    assert policy.due(10, epoch_ended=False, now=1.0)
    assert policy.due(7, epoch_ended=True, now=1.0)
    assert policy.due(11, epoch_ended=False, now=61.0)
    policy.saved(11, now=61.0)
    assert not policy.due(12, epoch_ended=False, now=100.0) and policy.due(12, epoch_ended=False, now=121.0)
    assert not policy.due(11, epoch_ended=True, now=500.0), "never twice at one step"


def test_checkpoint_policy_overrides_name_the_field():
    policy = CheckpointPolicy(every_steps=10)
    policy.apply_overrides(json.dumps({"every_steps": 200, "keep_best": {"metric": "val_loss", "k": 2}}))
    assert policy.every_steps == 200 and policy.monitor == "val_loss"
    policy.apply_overrides(json.dumps({"every_steps": None, "every_seconds": None, "keep_last": 5}))
    assert (policy.every_steps, policy.keep_last) == (200, 5), "null means: not set in the spec"
    with pytest.raises(UsageError, match=r"\$TRAIND_CHECKPOINT: unknown field 'evry_steps'"):
        policy.apply_overrides('{"evry_steps": 5}')
    with pytest.raises(UsageError, match=r"\$TRAIND_CHECKPOINT: keep_last: expected an integer >= 1, got 'three'"):
        policy.apply_overrides('{"keep_last": "three"}')
    with pytest.raises(UsageError, match="not JSON"):
        policy.apply_overrides("{every")


def test_the_job_and_the_spec_apply_one_checkpoint_rule(tmp_path):
    """Both processes call traind.store.policy.check_policy: what one refuses, the other does."""
    from traind.supervisor.spec import load_spec
    for field, value, expected in (("every_steps", 0, "an integer >= 1 or null"),
                                   ("every_seconds", 0, "a number > 0 or null"),
                                   ("keep_last", 0, "an integer >= 1"),
                                   ("every_steps", 10**13, "an integer >= 1, at most 1000000000000")):
        with pytest.raises(UsageError) as in_code:
            CheckpointPolicy(**{field: value})
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"name: x\ncommand: [python]\ncheckpoint: {{{field}: {value}}}\n")
        with pytest.raises(UsageError) as in_spec:
            load_spec(spec)
        assert f"CheckpointPolicy: {field}: expected {expected}" in str(in_code.value)
        assert f"checkpoint.{field}: expected {expected}" in str(in_spec.value)


def test_early_stopping_counts_non_improvements_and_keeps_state():
    class T:
        global_step, should_stop = 5, False
    stop, trainer = EarlyStopping("val_loss", patience=2), T()
    for value in (1.0, 0.9, 0.95, 0.91):
        stop.on_validation_end(trainer, None, {"val_loss": value})
    assert trainer.should_stop and stop.state_dict() == {"best": 0.9, "wait": 2, "stopped_step": 5}
    again = EarlyStopping("val_loss", patience=2)
    again.load_state_dict(stop.state_dict())
    assert again.best == 0.9 and again.wait == 2


def test_session_transitions_name_every_edge():
    assert transition(Phase.STARTING, Event.RESTORED) is Phase.TRAINING
    assert transition(Phase.STARTING, Event.STOP_REQUESTED) is Phase.STOPPING
    assert transition(Phase.TRAINING, Event.FINISHED) is Phase.FINISHING
    assert transition(Phase.STOPPING, Event.SAVED) is Phase.PREEMPTED
    assert transition(Phase.FINISHING, Event.SAVED) is Phase.DONE
    assert transition(Phase.TRAINING, Event.ERROR) is Phase.FAILED
    with pytest.raises(RuntimeError, match="illegal"):
        transition(Phase.DONE, Event.STOP_REQUESTED)


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_control_channel_turns_messages_into_flags_and_eof_into_a_stop():
    ours, theirs = socket.socketpair()
    flags = StopFlags()
    channel = ControlChannel(ours, flags)
    channel.start()
    theirs.sendall(b"not json\n" + protocol.encode(protocol.CHECKPOINT_NOW, reason="asked")[:7])
    theirs.sendall(protocol.encode(protocol.CHECKPOINT_NOW, reason="asked")[7:])
    assert _wait_for(lambda: flags.checkpoint_reason == "asked")
    assert flags.stop is None and flags.take_checkpoint_request() == "asked"
    assert channel.send(protocol.HEARTBEAT, step=3, epoch=0, metrics={})
    assert protocol.decode(theirs.recv(4096)) == {"type": "heartbeat", "step": 3, "epoch": 0, "metrics": {}}
    theirs.sendall(protocol.encode(protocol.CHECKPOINT_AND_STOP, reason="spot notice"))
    assert _wait_for(lambda: flags.stop is not None) and flags.stop.reason == "spot notice"
    theirs.close()      # EOF later does not replace the first reason
    time.sleep(0.05)
    assert flags.stop.reason == "spot notice"
    assert not channel.send(protocol.HEARTBEAT, step=4) or not channel.send(protocol.HEARTBEAT, step=5)


def test_control_channel_eof_means_supervisor_gone():
    ours, theirs = socket.socketpair()
    flags = StopFlags()
    ControlChannel(ours, flags).start()
    theirs.close()
    assert _wait_for(lambda: flags.stop is not None) and flags.stop.reason == "supervisor gone"


def test_metrics_log_drops_steps_past_the_resume_point_and_torn_lines(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.append({"step": step, "loss": step / 10})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')          # torn by a SIGKILL
    MetricsLog(tmp_path).truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_console_draws_a_bar_on_a_terminal_and_plain_lines_otherwise():
    from traind.jobs.runtime.reporting import Console
    tty, plain = _Stream(True), _Stream(False)
    for stream in (tty, plain):
        console = Console(100, stream=stream, every_steps=50, every_seconds=1e9)
        for step in range(1, 101):
            console.step(step, 0, {"loss": 0.5}, rate=10.0, now=0.0)
    assert "\r[" in tty.getvalue() and "\n" not in tty.getvalue()
    assert tty.getvalue().endswith("\r[########################] step 100/100 epoch 0 loss=0.5 10.0 it/s\x1b[K")
    lines = plain.getvalue().splitlines()
    assert lines == ["traind: step 1/100 epoch 0 loss=0.5 10.0 steps/s",
                     "traind: step 50/100 epoch 0 loss=0.5 10.0 steps/s",
                     "traind: step 100/100 epoch 0 loss=0.5 10.0 steps/s"]


def test_metrics_log_that_cannot_be_written_is_a_traind_error_naming_the_file(tmp_path):
    """A full disk mid-run (or a directory in the way) was an OSError traceback out of step_done()."""
    from traind.contract.errors import TraindError
    from traind.jobs.runtime.reporting import MetricsLog
    (tmp_path / "metrics.jsonl").mkdir()
    log = MetricsLog(tmp_path)
    with pytest.raises(TraindError, match=r"metrics\.jsonl: cannot rewrite the metrics log: Is a directory$"):
        log.truncate_after(3)
    with pytest.raises(TraindError, match=r"metrics\.jsonl: cannot append a metrics line: Is a directory$"):
        log.append({"step": 1})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]     # no temp file left
