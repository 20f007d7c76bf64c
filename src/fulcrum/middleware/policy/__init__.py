"""Pure policies of the built-in middlewares: no sockets, no event loop, testable with plain values."""
