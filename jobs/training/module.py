"""TrainModule: the user's model plus how to train it (Lightning-style)."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from traind.contract.errors import UsageError
from ..engine.loading import read_state
from .hparams import HyperparametersMixin


class TrainModule(HyperparametersMixin, nn.Module):
    """Subclass it; implement `training_step(batch, batch_idx) -> loss` and `configure_optimizers()`.

    `configure_optimizers` may return: an optimizer; a list of optimizers; `(optimizers, schedulers)`;
    a dict `{"optimizer": opt, "lr_scheduler": sched | {"scheduler": sched, "interval": "step"|"epoch",
    "frequency": 1, "monitor": "val_loss"}}`; or a list of such dicts. Several optimizers must own
    disjoint parameters: one backward pass, then every optimizer steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self._logged: dict[str, list[float]] = defaultdict(list)
        self.trainer = None

    # --- what the user implements --------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def validation_step(self, batch, batch_idx: int):
        return None

    def configure_optimizers(self):
        raise NotImplementedError(f"{type(self).__name__} must implement configure_optimizers()")

    # --- metrics -------------------------------------------------------------------------
    def log(self, name: str, value) -> None:
        """Record a metric for this step (a validation metric is averaged over the val batches)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        self.__dict__["_logged"][name].append(float(value))

    def pop_logged(self) -> dict[str, float]:
        logged = self.__dict__["_logged"]
        out = {k: sum(v) / len(v) for k, v in logged.items() if v}
        logged.clear()
        return out

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, path, map_location="cpu", strict: bool = True, *,
                             unverified: bool = False, **overrides):
        """Rebuild the module from the checkpoint's hyperparameters (`overrides` win), load its weights.

        `path` is a run dir (its newest valid checkpoint), a checkpoint dir (…/step-N) or a file in
        one (its state.pt); the checkpoint is verified (sizes, checksums) before it is loaded.
        `unverified=True` loads one file as it is, with no manifest to check it against: the
        explicit way to load a file you trust that traind did not write (a plain torch.save or a
        Lightning .ckpt). Either way it is read with weights_only=True."""
        state_file, state = read_state(path, map_location=map_location, unverified=unverified)
        if "state_dict" not in state:
            raise UsageError(f"{state_file}: no 'state_dict' in it; not a traind/Lightning checkpoint")
        hparams = dict(state.get("hyper_parameters") or {})
        hparams.update(overrides)
        module = cls(**hparams)
        module.load_state_dict(state["state_dict"], strict=strict)
        return module
