"""The Legator control plane: MCP-first fleet operations behind policy, approvals and an audit log."""

__version__ = "0.1.0"
__all__ = ["__version__"]
