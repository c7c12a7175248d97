"""One module per domain, each with a ``register(table)`` function."""
