"""Privacy: the ledger of releases, their accounting, and calibration of noise to a target epsilon.

Zero-out adjacency throughout (docs/privacy.md derives every rule).
"""
