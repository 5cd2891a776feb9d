"""Benchmarks behind ``make bench``: each measures our design against a baseline run side by side
in the same process and prints a markdown table of both figures and their ratio."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
