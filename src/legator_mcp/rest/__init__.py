"""The REST adapter: thin routes under /api/v1 over the service layer."""
