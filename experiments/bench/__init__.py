"""Benchmarks: ratios against the bare network cost and against peers, measured in one run."""
