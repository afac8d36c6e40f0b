"""Training and evaluation: hybrid (Algorithm 1) and joint training, checkpoints, logs."""
