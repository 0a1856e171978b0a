"""Benchmarks: throughput, latency and cold-start figures printed beside their references.

Run them all with `python -m bench` (or `make bench`); `--quick` for a short smoke run. Each module
implements the API described in `bench.report`; `bench.__main__.MODULES` lists the ones that run.
See docs/benchmarks.md for what each figure means.
"""
