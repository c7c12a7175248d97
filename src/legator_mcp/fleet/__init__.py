"""The fleet domain: probes, registration tokens, status and health, inventory, tags and signing keys."""
