"""HTTP/1.1 message rules Fulcrum enforces: framing, header policy, limits, the responses it makes itself."""
