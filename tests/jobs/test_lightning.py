"""traind.lightning with the real pytorch-lightning, in this process (small models, a few dozen
steps each): traind's checkpoints open in Lightning, Lightning's resume through traind is exact,
ModelCheckpoint's saves land in traind's store, the resumable sampler, the checkpoint schema."""
import shutil
import sys
import warnings

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

import traind  # noqa: E402
import traind.lightning  # noqa: E402
from traind import store as ck  # noqa: E402
from traind.contract.errors import TraindError  # noqa: E402
from traind.jobs.examples.lightning_job import BlobData, LitClassifier  # noqa: E402
from traind.jobs.examples.tiny import Blobs, TinyClassifier  # noqa: E402
from traind.jobs.runtime import schema  # noqa: E402
from traind.jobs.adapters.lightning.sampler import ResumableSampler  # noqa: E402
from traind.jobs.runtime.preemption import FLAGS  # noqa: E402
from traind.jobs.engine import CheckpointEngine  # noqa: E402

from jobhelpers import assert_identical, metrics  # noqa: E402
from test_load_paths import flip_a_weight_byte  # noqa: E402

STEPS = 24                       # BlobData(samples=256): 224 train samples, 7 batches of 32 per epoch


@pytest.fixture(autouse=True)
def clean_flags(monkeypatch):
    for name in ("TRAIND_RUN_DIR", "TRAIND_RESUME_FROM", "TRAIND_CONTROL_FD", "TRAIND_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    FLAGS.clear()
    yield
    FLAGS.clear()


class Recorder(pl.Callback):
    """Where training started, and (stop_at) a stop request as a supervisor would send it."""

    def __init__(self, stop_at=None):
        self.stop_at, self.started = stop_at, None

    def on_train_start(self, trainer, pl_module):
        self.started = (trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.stop_at:
            FLAGS.request_stop("test: checkpoint_and_stop")


def fit(run_dir, *callbacks, steps=STEPS, ckpt_path=None, extra=(), model=None, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir,
                         callbacks=[*callbacks, *extra], num_sanity_val_steps=2, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model or LitClassifier(hidden=32), BlobData(samples=256, batch_size=32), ckpt_path=ckpt_path)
    return trainer


def final(run_dir) -> dict:
    return traind.jobs.engine.loading.load_state(run_dir)


def test_a_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    fit(tmp_path / "alone", traind.lightning.Checkpointing())
    rec = Recorder(stop_at=10)
    with pytest.raises(SystemExit) as stopped:       # mid-epoch: step 10 is batch 3 of epoch 1
        fit(tmp_path / "run", rec, traind.lightning.Checkpointing(every_n_train_steps=4))
    assert stopped.value.code == 75
    newest = ck.latest_valid(tmp_path / "run" / "checkpoints")[0]
    assert (newest.step, newest.reason) == (10, "emergency")
    FLAGS.clear()
    again = Recorder()
    fit(tmp_path / "run", again, traind.lightning.Checkpointing(every_n_train_steps=4))   # no ckpt_path
    assert again.started == (10, 1)
    a, b = final(tmp_path / "alone"), final(tmp_path / "run")
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch"):
        assert_identical(a[key], b[key], key)
    assert metrics(tmp_path / "alone") == metrics(tmp_path / "run")


def test_model_checkpoint_saves_land_in_the_store_and_its_names_load_back(tmp_path):
    mc = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "lightning", monitor="val_loss", save_top_k=2,
                                      every_n_epochs=1)
    trainer = fit(tmp_path, traind.lightning.Checkpointing(keep_last=1), extra=[mc], val_check_interval=1.0)
    # Made as Lightning makes it (a script's own torch.save there after fit must work: issue 21),
    # and nothing of Lightning's written there: the saves went to traind's store.
    assert list((tmp_path / "lightning").iterdir()) == []
    infos = ck.list_checkpoints(tmp_path / "checkpoints")
    assert all(i.valid for i in infos) and infos[0].step == STEPS
    cb = trainer.callbacks[0]
    assert cb.policy.keep_best == {"metric": "val_loss", "mode": "min", "k": 2}
    assert all("val_loss" in i.metrics for i in infos if i.step != STEPS)
    best = trainer.strategy.checkpoint_io.resolve(mc.best_model_path)     # Lightning's name for it
    assert ck.STEP_DIR_RE.match(best.name) and best.exists()
    assert LitClassifier.load_from_checkpoint(best).hparams.hidden == 32
    best_score = mc.best_model_score.item()      # (validate restores the callback's older state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer.validate(datamodule=BlobData(samples=256, batch_size=32), ckpt_path="best", verbose=False)
    assert result[0]["val_loss"] == pytest.approx(best_score)


def test_a_traind_trainer_checkpoint_opens_in_lightning(tmp_path):
    traind.seed_everything(0)
    traind.Trainer(max_steps=12, run_dir=tmp_path / "t", log_every_n_steps=1000).fit(
        TinyClassifier(hidden=32, lr=0.01), Blobs(samples=512, batch_size=64))   # 7 batches an epoch
    step_dir = ck.latest_valid(tmp_path / "t" / "checkpoints")[0].path
    traind.lightning.install_loader()
    for path in (step_dir / "state.pt", step_dir):            # the file, or its directory
        model = LitClassifier.load_from_checkpoint(path)
        assert (model.hparams.hidden, model.hparams.lr) == (32, 0.01)
        assert_identical(model.state_dict(), final(step_dir)["state_dict"])
    rec = Recorder()
    trainer = fit(tmp_path / "lit", rec, steps=15, ckpt_path=step_dir, enable_checkpointing=False,
                  model=LitClassifier(hidden=32, lr=0.01))
    assert rec.started == (12, 1) and trainer.global_step == 15     # saved step and epoch
    broken = tmp_path / "broken"
    shutil.copytree(step_dir, broken / "step-000000012")
    flip_a_weight_byte(broken / "step-000000012" / "state.pt")
    with pytest.raises(TraindError, match="checksum"):
        LitClassifier.load_from_checkpoint(broken / "step-000000012" / "state.pt")


def test_older_traind_checkpoints_still_restore(tmp_path):
    """Before Lightning's schema, `loops` held traind's counters; those checkpoints still load."""
    model = torch.nn.Linear(2, 1)
    with traind.Session(tmp_path, model=model, max_steps=3) as s:
        s.step_done(loss=1.5)
        state = s.checkpoint_state()
    assert state["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 1
    legacy = {k: v for k, v in state.items() if k not in (schema.COUNTERS_KEY, schema.VERSION_KEY)}
    legacy["loops"] = {"global_step": 1, "epoch": 0, "batches_consumed": 1, "last_metrics": {"loss": 1.5}}
    with CheckpointEngine(tmp_path / "old") as st:
        st.save(legacy, step=1, epoch=0)
    resumed = traind.Session(tmp_path / "old", model=torch.nn.Linear(2, 1), max_steps=3)
    assert (resumed.step, resumed.last_metrics) == (1, {"loss": 1.5})
    resumed.close()


def test_schema_shapes_lightning_resumes_from():
    mid = schema.fit_loop_state(global_step=12, epoch=1, batches_consumed=5)
    bp = mid["epoch_loop.batch_progress"]["current"]
    assert (bp["processed"], bp["completed"]) == (5, 4)          # saved at a batch end
    assert mid["epoch_progress"]["current"]["completed"] == 1
    start = schema.fit_loop_state(global_step=14, epoch=2, batches_consumed=0)
    assert start["epoch_progress"]["total"] == {"ready": 2, "started": 2, "processed": 2, "completed": 2}
    assert schema.counters({"loops": {"global_step": 3}}) == {"global_step": 3}   # the old place
    assert schema.counters({"loops": {"fit_loop": {}}, "traind": {"global_step": 4}}) == {"global_step": 4}


def test_resumable_sampler_shards_resumes_and_rolls_over():
    full = [list(ResumableSampler(10, 2, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(full[0] + full[1]) == list(range(10)) and len(full[0]) == 5
    resumed = ResumableSampler(10, 2, seed=3, num_replicas=2, rank=1, start_batch=1)
    assert list(resumed) == full[1][2:] and len(resumed) == 5       # len: the whole epoch
    other_epoch = ResumableSampler(10, 2, seed=3, num_replicas=2, rank=1, epoch=1)
    assert list(other_epoch) != full[1]
    resumed.set_epoch(1)
    assert list(resumed) == list(other_epoch)
    done = ResumableSampler(10, 2, seed=3, epoch=4, start_batch=5)    # epoch 4 finished
    assert (done.epoch, done.start_batch) == (5, 0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
