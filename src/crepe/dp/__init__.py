"""DP-SGD pieces: one DP optimizer (factor = clip rule x weight), clip rules, base
optimizers, Poisson sampling, and clipping diagnostics."""
