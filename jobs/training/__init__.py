"""traind's own training API on top of the runtime: Trainer, TrainModule, hyperparameters,
optimizers and precision."""
