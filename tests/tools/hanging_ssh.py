#!/usr/bin/env python3
"""A stand-in for ``ssh`` to a node that never answers: it just waits (until the launcher stops it)."""
import time

while True:
    time.sleep(60)
