"""Launching mindedit jobs: msrun per node (here: the local node), worker entry point, failure reporting.
Rank tables and multi-node fan-out are issue 6."""
