"""Prints os.getloadavg() at each test's start and end (an outside pytest plugin, not in the repo)."""
import json, os, time
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    a = os.getloadavg(); t0 = time.time()
    print(f"\nLOADAVG start {item.nodeid}: {a[0]:.2f} {a[1]:.2f} {a[2]:.2f}", flush=True)
    yield
    b = os.getloadavg()
    print(f"\nLOADAVG end {item.nodeid}: {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} ({time.time()-t0:.1f} s)", flush=True)
