"""Benchmarks: throughput of a training step against its floor."""
