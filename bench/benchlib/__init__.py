"""Helpers of bench/run.py: fixtures, processes, nginx, contenders, measuring, reports."""

import os

# The repository root, and build/bench/ for compiled helpers and results.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "bench")
