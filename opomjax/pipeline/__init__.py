"""Experiment plumbing shared by the launchers in ``experiments/``: mask files, feature caches, resumable
generation and evaluation, and reports. Everything here is importable and tested; the launchers only parse
flags and call it."""
