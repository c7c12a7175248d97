"""MCP resources (registered from the tool modules of each domain)."""
