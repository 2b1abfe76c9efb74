"""Small training sets chosen under DP: full, random, CRAIG (from privatised proxies)."""
