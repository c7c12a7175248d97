"""The Legator probe: a small agent that runs on a host and holds one WebSocket to the control plane."""

__version__ = "0.1.0"
