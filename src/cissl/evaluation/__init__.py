"""Metrics CISSL papers report, evaluation of a model on a pool, run summaries and tables."""
