"""Benchmarks: load generator, server harness, peer comparisons, GPU scripts. Run from the repository root."""
