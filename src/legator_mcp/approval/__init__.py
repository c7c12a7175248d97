"""The approval queue: commands policy queued wait here, bound to a digest of their payload, for human approval."""
