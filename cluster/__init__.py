"""Launching a command on every rank of a cluster: the cluster config, HCCL rank tables, one msrun (or rank-table
agent) per node over ssh, watching every node and stopping all of them when one rank fails. A leaf: it takes the
worker's argv, the hosts and the environment, and knows nothing of what the workers run."""
