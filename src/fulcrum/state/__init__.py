"""Runtime state: servers, upstream groups and the snapshot the data plane reads."""
