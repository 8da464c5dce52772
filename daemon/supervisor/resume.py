"""Where the next attempt starts from: the newest checkpoint that verifies, read from manifests
and checksums (never unpickled); newer ones that do not verify are reported once, as values; and a
resume point the job could not load is set aside (never deleted), so the next attempt falls back."""
from __future__ import annotations

from pathlib import Path

from .. import store
from ..contract.exitcodes import UNUSABLE_CHECKPOINT


def find_resume_point(run_dir: Path):
    """(CheckpointInfo|None, skipped newer ones)."""
    return store.latest_valid(store.checkpoints_dir(run_dir))


class ResumePoints:
    def __init__(self, run_dir: Path, find=find_resume_point, say=print, event=lambda kind, **fields: None):
        self.run_dir, self.find, self.say, self.event = run_dir, find, say, event
        self._cache = None      # (info, skipped) found when the last child exited: no child runs until the next

    def refresh(self):
        """The resume point now (after a child exited); kept for the next spawn."""
        self._cache = self.find(self.run_dir)
        return self._cache[0]

    def take(self, *, quiet: bool):
        """The resume point for a spawn (or for saying where a stopped run stands)."""
        info, skipped = self._cache or self.find(self.run_dir)
        self._cache = None
        if not quiet:
            for bad in skipped:
                self.say(f"skipping checkpoint {Path(bad.path).name}: {bad.error}")
                self.event("checkpoint_skipped", reason=f"{Path(bad.path).name}: {bad.error}", checkpoint_step=bad.step)
        return info

    def set_aside(self, a) -> bool:
        """The child could not load the checkpoint it was given (exit 65): move it out of
        discovery's sight, so the next attempt resumes from the previous valid one, unpenalised."""
        why = a.reason or f"attempt {a.number} exited {UNUSABLE_CHECKPOINT}: it could not load this checkpoint"
        try:
            dest = store.set_aside(Path(a.resume_path), why)
        except OSError as err:
            self.say(f"cannot set aside unusable checkpoint {a.resume_path}: {err.strerror or err}")
            return False
        self.say(f"checkpoint {Path(a.resume_path).name} is unusable ({why}); set aside as {dest.name}, "
                 "falling back to the previous valid one")
        self.event("checkpoint_unusable", reason=why, checkpoint_step=a.resume_step, path=str(dest))
        return True
