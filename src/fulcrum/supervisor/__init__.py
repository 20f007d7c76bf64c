"""fulcrum.supervisor."""
