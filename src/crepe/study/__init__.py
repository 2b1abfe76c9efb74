"""The study: grids of `crepe train` runs (sweep) and their tables and plots (report)."""
