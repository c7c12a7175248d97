"""The probe agent: the I/O shell and lifecycle around :mod:`legator_probe.protocol`.

* :mod:`.settings` — :class:`~.settings.ProbeSettings` (environment) and :class:`~.settings.ProbeConfig` (file).
* :mod:`.registration` — :func:`~.registration.register` with a one-time token.
* :mod:`.daemon` — :class:`~.daemon.ProbeDaemon`: connect, heartbeat, inventory, execute, reconnect.
* :mod:`.executor` and :mod:`.commands` — the six command kinds, with timeouts, cancel and output caps.
* :mod:`.policy` — the probe's own policy check (defence in depth).
* :mod:`.inventory`, :mod:`.metrics` — what the probe reports about its host.
* :mod:`.cli` — the ``legator-probe`` command; :mod:`.service` — its systemd unit.

Submodules are imported on demand (nothing is re-exported here) to keep an idle probe small.
"""
