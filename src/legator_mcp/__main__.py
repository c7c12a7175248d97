"""``python -m legator_mcp`` runs the ``legator`` command."""

import sys

from legator_mcp.cli import main

sys.exit(main())
