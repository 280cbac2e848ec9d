"""Measurement: open any artifact as a session, its memory alone, the environment, ad-hoc benchmarks."""
