"""Jobs: commands run on a schedule or on demand, one run per target probe, with retries and admission."""
