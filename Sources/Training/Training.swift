// Training: configuration, trainer, checkpoints.
