"""Helpers shared by tests, benchmarks and hack/dev.py: real processes and a real local cluster."""
