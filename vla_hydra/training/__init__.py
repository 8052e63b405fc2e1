"""Trainer-side pieces: callbacks, logger factories, helpers that build lists from config."""
