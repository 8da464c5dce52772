"""`traind.lightning`: the Lightning integration, by its short name; `traind.lightning.Checkpointing`
and the other names of `traind.jobs.adapters.lightning` resolve there on first use (daemon/forward.py)."""
from .forward import forward_to

__getattr__, __dir__ = forward_to("traind.jobs.adapters.lightning", globals())
