"""The probe gateway: the ``/ws/probe`` WebSocket endpoint and the hub of live probe connections."""
