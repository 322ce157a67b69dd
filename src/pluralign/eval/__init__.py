"""Evaluation of language models on worlds, and run reports."""
