"""``python -m legator_probe.agent`` runs the ``legator-probe`` CLI."""

from legator_probe.agent.cli import main

raise SystemExit(main())
