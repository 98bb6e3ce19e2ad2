"""Benchmarks: each measures, prints JSON, and writes JSON + a PNG plot under an output folder."""
