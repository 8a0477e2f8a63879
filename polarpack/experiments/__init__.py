"""Grids of runs: experiment files, the runner, the results store, reports and their statistics."""
