"""Helpers shared by the test suite: real upstream servers and raw-socket HTTP clients."""
