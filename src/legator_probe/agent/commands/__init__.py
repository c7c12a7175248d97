"""The six command kinds the probe executes, each in its own module, and the process runner they share.

Modules are imported lazily by :class:`~legator_probe.agent.executor.Executor` when a command of that
kind first arrives, so an idle probe does not carry ``difflib``, ``pwd`` or the kind-specific code.
"""
