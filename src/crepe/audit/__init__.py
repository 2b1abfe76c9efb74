"""Empirical privacy audit in one training run (DESIGN.md section 14; docs/privacy.md section 12).

- `bound`: the one-run lower bound of Steinke, Nasr & Jagielski (2023) on epsilon from a count of
  correct guesses about m canaries (numpy only);
- `fdp`: the f-DP conversion of the same count (Mahloujifar, Melis & Chaudhuri 2024), for a given
  tradeoff curve and, reported, the Gaussian ones (mu-GDP and its epsilon; pure Python);
- `canaries`: white-box gradient canaries inside the DP optimizer's clipped sum, their scores
  from the released noisy sums, and the audit record of a run (torch).

Sits beside crepe.privacy: it imports config, the ledger's neighbours and dp's protocol only;
training imports it, never the reverse.
"""
