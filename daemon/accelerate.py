"""`traind.accelerate`: the integration for loops on Hugging Face accelerate, by its short name;
`traind.accelerate.Checkpointing` resolves in `traind.jobs.adapters.accelerate` on first use
(daemon/forward.py)."""
from .forward import forward_to

__getattr__, __dir__ = forward_to("traind.jobs.adapters.accelerate", globals())
