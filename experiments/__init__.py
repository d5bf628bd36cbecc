"""Runnable studies, the report and the benchmarks (imports itscale; itscale never imports this)."""
