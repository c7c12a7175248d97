"""Multi-domain orchestration (e.g. run a command: policy → approval → sign → dispatch → audit)."""
