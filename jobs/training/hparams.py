"""save_hyperparameters(): record a constructor's arguments as plain Python values.

Checkpoints load with torch.load(weights_only=True), which accepts only plain containers,
numbers, strings and tensors, so anything else is refused here, where the user can still fix it
(name the argument in `ignore=`), rather than when the checkpoint is loaded weeks later.
"""
from __future__ import annotations

import inspect

PLAIN_SCALARS = (bool, int, float, str, type(None))


class HyperparameterError(TypeError):
    pass


def check_plain(value, where: str):
    """Return `value` if it is made of plain types only, else raise naming `where`."""
    if isinstance(value, PLAIN_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(check_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise HyperparameterError(f"{where}: key {key!r} is not a string")
        return {k: check_plain(v, f"{where}.{k}") for k, v in value.items()}
    raise HyperparameterError(
        f"{where} is a {type(value).__name__}, not a plain type (bool, int, float, str, None, "
        f"list, tuple, dict); pass it in ignore=[...] or store a plain description of it")


class HyperparametersMixin:
    """Adds `hparams` (a dict) and `save_hyperparameters()`."""

    def save_hyperparameters(self, *names: str, ignore=()) -> None:
        """Record the calling __init__'s arguments (all, or only `names`) into self.hparams."""
        frame = inspect.currentframe().f_back
        try:
            args = _init_arguments(frame)
        finally:
            del frame
        if names:
            missing = [n for n in names if n not in args]
            if missing:
                raise HyperparameterError(f"save_hyperparameters: no argument named {missing[0]!r}")
            args = {n: args[n] for n in names}
        ignored = {ignore} if isinstance(ignore, str) else set(ignore)
        owner = type(self).__name__
        recorded = {k: check_plain(v, f"{owner} hyperparameter {k!r}")
                    for k, v in args.items() if k not in ignored}
        self.__dict__.setdefault("_hparams", {}).update(recorded)

    @property
    def hparams(self) -> dict:
        return self.__dict__.setdefault("_hparams", {})


def _init_arguments(frame) -> dict:
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:count])
    values = {n: frame.f_locals[n] for n in names if n in frame.f_locals}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        extra_name = code.co_varnames[count + bool(code.co_flags & inspect.CO_VARARGS)]
        values.update(frame.f_locals.get(extra_name) or {})
    values.pop("self", None)
    values.pop("__class__", None)
    return values
