"""Training: config (LLaMA-Factory key names), data, model loading, the train loop (child process)."""
