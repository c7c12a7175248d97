"""Helpers for MCP tests."""

import re

from mcp.types import CallToolResult, TextContent

_CODE = re.compile(r"^(?:Error executing tool \S+: )?([a-z_]+):")


def tool_error_code(result: CallToolResult) -> str:
    """The stable error code at the start of a tool error's text (after the SDK's own prefix)."""
    assert result.is_error, result
    block = result.content[0]
    assert isinstance(block, TextContent)
    match = _CODE.match(block.text)
    assert match is not None, block.text
    return match.group(1)
