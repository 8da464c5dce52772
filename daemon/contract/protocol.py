"""The supervisor <-> job contract: environment variables and the control channel's messages.

Both sides import this module (it is stdlib-only). The channel is one end of an AF_UNIX
SOCK_STREAM socketpair inherited by the child; its fd number is in TRAIND_CONTROL_FD. Each message
is one line of UTF-8 JSON, an object with a "type" field. End of file on the channel means the
supervisor is gone: the job must write an emergency checkpoint and exit (never train unsupervised).
"""
from __future__ import annotations

import json
from typing import Any

# --- environment the supervisor sets for the child -------------------------------------------
ENV_RUN_DIR = "TRAIND_RUN_DIR"            # run dir; checkpoints live in $TRAIND_RUN_DIR/checkpoints
ENV_RESUME_FROM = "TRAIND_RESUME_FROM"    # path of the checkpoint dir to resume from; "" = fresh
ENV_CONTROL_FD = "TRAIND_CONTROL_FD"      # fd of the control channel (absent: unsupervised)
ENV_ATTEMPT = "TRAIND_ATTEMPT"            # 1 for the first launch, +1 per restart
ENV_JOB_NAME = "TRAIND_JOB_NAME"
ENV_CHECKPOINT_POLICY = "TRAIND_CHECKPOINT"  # JSON of the spec's `checkpoint:` section (optional)
ENV_SPARE = "TRAIND_SPARE"                # "1": a warm spare: start up, then wait for RESUME before restoring
ENV_MEMORY_TIER = "TRAIND_MEMORY_TIER"    # JSON {dir, every_steps, keep, budget_bytes}: checkpoint.memory is on

# --- child -> supervisor ----------------------------------------------------------------------
HELLO = "hello"            # {"pid": int, "resumed_step": int|None, "times_checkpoints": bool}
TIMES_CHECKPOINTS = "times_checkpoints"   # in HELLO: the job decides every_seconds itself (the policy it was
                                          # given); the supervisor sends CHECKPOINT_NOW only to jobs without it
HEARTBEAT = "heartbeat"    # {"step", "epoch", "metrics": {str: float}, "steps_per_second", "total": max steps|None}
CHECKPOINT = "checkpoint"  # {"step", "epoch", "path", "reason", "bytes", and CHECKPOINT_COSTS}
# What a commit cost: seconds from the save call to durable, the writer's CPU seconds, how long
# the caller was blocked, and the mean step time beside a background save over that without.
CHECKPOINT_COSTS = ("seconds", "writer_cpu_seconds", "blocked_seconds", "slowdown")
STOPPING = "stopping"      # {"reason": str}  about to exit after an emergency checkpoint
ERROR = "error"            # {"message": str}
SPARE_READY = "spare_ready"  # {"pid": int}  a warm spare is built and waits for RESUME (holds no lock yet)

# --- supervisor -> child ----------------------------------------------------------------------
CHECKPOINT_AND_STOP = "checkpoint_and_stop"  # {"reason": str}  emergency checkpoint, exit 75
CHECKPOINT_NOW = "checkpoint_now"            # {"reason": str}  periodic checkpoint, keep training
RESUME = "resume"          # {"resume_from": str ("" = fresh), "attempt": int}  a spare becomes the attempt

REASON_PERIODIC = "periodic"
REASON_EMERGENCY = "emergency"
REASON_FINAL = "final"


class ProtocolError(ValueError):
    pass


def encode(msg_type: str, **fields: Any) -> bytes:
    return (json.dumps({"type": msg_type, **fields}, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict:
    """One line -> message dict. Malformed input is a ProtocolError (a value the reader logs)."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("message is not an object with a string 'type'")
    return msg


class LineBuffer:
    """Splits a byte stream into complete lines (a read may end mid-line)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        return [line for line in lines if line.strip()]
