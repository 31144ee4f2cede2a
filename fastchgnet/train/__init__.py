"""Training: loss, loop, engine (DeepSpeed), checkpoints, metrics; ``run.train`` composes them."""
