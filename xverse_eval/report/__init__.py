"""Reports people read: the comparison table against the XVERSE card (table.py), a leaderboard of
several runs (leaderboard.py), a bar chart (plot.py, needs matplotlib), and results.json in
lm-eval's layout (lmeval.py). runs.py reads run dirs and the reported scores."""
from __future__ import annotations

from .lmeval import lm_eval_results
from .runs import SCHEMA, load_records, load_results, reported
from .table import markdown, provenance, render, table

__all__ = ["SCHEMA", "lm_eval_results", "load_records", "load_results", "markdown", "provenance", "render", "reported", "table"]
