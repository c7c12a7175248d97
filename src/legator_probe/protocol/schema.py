"""Print the wire protocol's JSON Schema, the form committed as ``contracts/wire-protocol.schema.json``.

Usage::

    python -m legator_probe.protocol.schema > contracts/wire-protocol.schema.json
"""

import json
import sys

from legator_probe.protocol.messages import wire_json_schema


def render_wire_schema() -> str:
    """Return :func:`wire_json_schema` as pretty JSON with sorted keys and a trailing newline."""
    return json.dumps(wire_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Write the rendered schema to standard output."""
    sys.stdout.write(render_wire_schema())


if __name__ == "__main__":
    main()
