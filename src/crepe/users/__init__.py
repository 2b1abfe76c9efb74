"""Users for user-level DP (DESIGN.md section 11): who contributed which training example.

A `Partition` (partition.py) gives every example the id of its user, 0..U-1, and the public
maximum k of examples one user may hold; it comes from user ids a caller brings
(`Partition.from_ids`), from a seeded synthetic-writer split of an image set (synthetic.py), or
from QMNIST's NIST writer ids (qmnist.py). The user-level trainers will read partitions; none
lives here yet. embedding.py evaluates embeddings on held-out classes (pairwise recall at FAR, 1-NN).

Imports point down only: crepe.config, crepe.data, numpy, and torch inside the functions that
warp or load images; this package file imports nothing.
"""
