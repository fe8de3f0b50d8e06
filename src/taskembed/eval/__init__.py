"""Evaluation: MTEB-style tasks, metrics and the held-out multilingual suite."""
