"""The checkpoint engine: one orchestration of every save (engine.py), with a layout per kind
of checkpoint (single.py: one state.pt; sharded.py: a group's DCP shards and rank files), the
snapshot buffers (snapshot.py), the writer and its thread (writer.py, priority.py), and the one
verified way to load (loading.py). The on-disk format and the commit belong to traind.store."""
from .engine import CheckpointEngine
from .loading import UnusableCheckpoint, load_checkpoint
from .single import SingleFile

__all__ = ["CheckpointEngine", "SingleFile", "UnusableCheckpoint", "load_checkpoint"]
