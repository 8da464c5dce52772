"""Placeholder: commands of this group are being written (see docs/contracts.md)."""


def register(sub):
    pass
