"""DP-SGD pieces: one DP optimizer (factor = clip rule x weight), clip rules, base
optimizers, Poisson sampling, clipping diagnostics, and the keyed generators the
noise draws from (secret_rng)."""
