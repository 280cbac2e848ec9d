"""Teacher to deployed student: distill, quantize, export, build engines, benchmark, report, deploy."""

__version__ = "0.1.0"
