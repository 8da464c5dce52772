"""Precision modes: "32", "bf16" (autocast to bfloat16), "16-mixed" (autocast to float16 + GradScaler).

On CPU both autocast modes work, and torch.amp.GradScaler("cpu") keeps the loss scale; its state
is saved under `MixedPrecision` so a resumed run continues with the same scale and growth tracker.
"""
from __future__ import annotations

import contextlib

import torch

MODES = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
         "16-mixed": torch.float16, "16": torch.float16}


class Precision:
    def __init__(self, mode: str, device_type: str) -> None:
        mode = str(mode)
        if mode not in MODES:
            raise ValueError(f"precision must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode, self.device_type, self.dtype = mode, device_type, MODES[mode]
        self.scaler = torch.amp.GradScaler(device_type) if self.dtype is torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizers, parameters, clip_val: float | None) -> None:
        """Unscale (16-mixed), clip, step every optimizer; the scaler skips steps with inf/nan grads."""
        if self.scaler is not None and clip_val:
            for opt in optimizers:
                self.scaler.unscale_(opt)
        if clip_val:
            torch.nn.utils.clip_grad_norm_(parameters, clip_val)
        for opt in optimizers:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
