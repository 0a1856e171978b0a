"""Faithful local platform servers for tests, benchmarks and `python -m devstack dev`."""
