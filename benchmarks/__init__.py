"""Benchmarks: ``python -m benchmarks [--quick]`` prints a table of figures, each paired with a
baseline measured in the same run, and writes ``benchmarks/results/<timestamp>.json``."""
