"""Benchmarks of the device server (run with `python -m bench`)."""
