"""Filesystem mechanisms shared by every part (stdlib only): durable writes and file locks."""
