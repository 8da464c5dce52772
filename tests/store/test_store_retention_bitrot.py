"""Bit rot plus retention must never cost new progress (issue 10, item 2).

A previous process committed steps 100, 150, 200; then a byte of step 200's state.pt rotted (same
size). The next process resumes from 150 and commits 155, 160 with keep_last=1. Judged by sizes
alone, the rotten 200 counted as the newest valid checkpoint and every new one was deleted right
after its commit, so after a kill the newest valid checkpoint was older than where training was.
"""
import subprocess
import sys

from traind import store as ck

PHASE_ONE = """
import sys
from traind import store as ck
for step in (100, 150, 200):
    pending = ck.begin(sys.argv[1], step, 4096)
    pending.write_bytes(ck.STATE_NAME, bytes([step % 251]) * 65536)
    pending.commit(step, 0, "periodic", {"loss": 1.0 / step})
"""


def committed_by_another_process(ckpt_dir):
    subprocess.run([sys.executable, "-c", PHASE_ONE, str(ckpt_dir)], check=True)


def rot_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_rotten_newest_checkpoint_never_displaces_new_commits(ckpt_dir):
    committed_by_another_process(ckpt_dir)
    rot_one_byte(ckpt_dir / "step-000000200" / ck.STATE_NAME)
    resume, skipped = ck.latest_valid(ckpt_dir)
    assert resume.step == 150 and [s.step for s in skipped] == [200]
    for step in (155, 160):
        pending = ck.begin(ckpt_dir, step, 4096)
        pending.write_bytes(ck.STATE_NAME, bytes([step % 251]) * 65536)
        pending.commit(step, 0, "periodic", {})
        ck.prune(ckpt_dir, keep_last=1, protect=[resume.path])
        newest, _ = ck.latest_valid(ckpt_dir)
        assert newest.step == step, f"checkpoint {step} was pruned right after its commit"
    left = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))
    # 200 stays (the newest by step: never deleted, never trusted), 150 is protected, 160 is the last one
    assert left == ["step-000000150", "step-000000160", "step-000000200"]


def test_keep_best_never_picks_a_rotten_checkpoint(ckpt_dir):
    committed_by_another_process(ckpt_dir)        # loss is lowest at 200
    rot_one_byte(ckpt_dir / "step-000000200" / ck.STATE_NAME)
    pending = ck.begin(ckpt_dir, 210, 4096)
    pending.write_bytes(ck.STATE_NAME, b"x" * 4096)
    pending.commit(210, 0, "periodic", {"loss": 1.0})
    ck.prune(ckpt_dir, keep_last=1, keep_best={"metric": "loss", "mode": "min", "k": 1})
    left = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))
    assert "step-000000150" in left, "the best valid checkpoint must be kept instead of the rotten 200"
    assert "step-000000210" in left
