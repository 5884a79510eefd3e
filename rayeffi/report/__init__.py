"""Plots of a finished run and one HTML page with them all, drawn from its ``summary.json``."""

from rayeffi.report.plots import write_report

__all__ = ["write_report"]
