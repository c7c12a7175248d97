"""One module per domain, each with a ``register(registry)`` function."""
