"""Adapters: how a framework's training loop plugs into the job runtime (jobs/runtime/) and the
checkpoint engine (jobs/engine/). The core never imports an adapter (tests/test_layout.py)."""
