"""The in-process event bus: lifecycle events for SSE streams, MCP notifications and (later) webhooks."""
