"""The job side's commands: what the torch-free CLI (`traind ckpt export`, `traind ckpt import`)
runs in a subprocess with torch. They read and write checkpoints through the engine."""
