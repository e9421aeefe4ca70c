"""Benchmark scripts run by ``semidff benchmark ...``; their output goes to BENCHMARKS.md."""
