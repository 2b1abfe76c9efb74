"""Small training sets chosen under DP: full, random, CRAIG (from privatised proxies) and
private-set (synthetic images), one module each in methods/ behind the protocol of method.py.
Imports point one way: methods -> method, sets, proxies, private_set (the generation engine)."""
