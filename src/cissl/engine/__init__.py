"""Training engine: optimizer and schedule, EMA, checkpoints, logging, the training loop."""
