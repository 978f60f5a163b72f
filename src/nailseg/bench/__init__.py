"""Benchmarks: ``nailseg bench loaders`` and ``nailseg bench train`` (JSON + PNG, never timed asserts)."""
