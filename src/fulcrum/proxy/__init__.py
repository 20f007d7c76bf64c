"""fulcrum.proxy."""
