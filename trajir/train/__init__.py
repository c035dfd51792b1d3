"""``python -m trajir.train``: configs, data, stages (pretrain, rl, distill, rl+distill), checkpoints, logs."""
