"""traind supervisor side. Never imports torch (tests/test_no_torch.py checks it)."""
__version__ = "0.1.0"
