"""`traind.hf`: the Hugging Face Transformers integration, by its short name; `traind.hf.Checkpointing`
resolves in `traind.jobs.adapters.hf` on first use (daemon/forward.py)."""
from .forward import forward_to

__getattr__, __dir__ = forward_to("traind.jobs.adapters.hf", globals())
