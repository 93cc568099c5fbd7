"""Load generators and measurements (python -m bench.load, bench.rest, bench.hostile)."""
