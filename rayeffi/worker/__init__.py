"""Worker-side code: the per-worker loop and the training step."""
