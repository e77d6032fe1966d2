"""Training of BLSP-KD models: data and batching, the trainer for stages 4 and 5, checkpoints, distributed launch."""
