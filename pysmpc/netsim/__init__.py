"""Simulated networks for measuring the cluster: a TCP relay that adds a link's delay and rate cap."""

from pysmpc.netsim.relay import LinkRelay, TokenBucket

__all__ = ["LinkRelay", "TokenBucket"]
