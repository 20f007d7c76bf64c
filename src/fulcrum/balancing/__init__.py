"""Balancing policies: pure, no I/O, one module per policy behind the Balancer protocol."""
