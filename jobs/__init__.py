"""traind job side: what runs inside the training process (imports torch)."""
