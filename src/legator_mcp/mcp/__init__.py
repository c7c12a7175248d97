"""The MCP adapter: tools, resources and prompts over the service layer, served over stdio and Streamable HTTP."""
