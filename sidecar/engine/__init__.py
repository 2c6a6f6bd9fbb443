"""Engines and the model repository: which versions exist, their sessions, warm-up and statistics."""
