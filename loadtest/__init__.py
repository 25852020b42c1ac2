"""Load tests and benchmarks. Benchmarks write machine-readable results; they are
never timed tests."""
