"""Scheduling a version's requests onto its engine: straight through, or dynamically batched."""
