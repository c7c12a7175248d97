"""Command runs: every instruction sent to a probe, its policy decision and its result, as a durable record."""
