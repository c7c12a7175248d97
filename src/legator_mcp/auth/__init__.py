"""Authentication and authorisation: API keys, users, roles, permissions and scoped grants."""
