"""CTI: the WebSocket interface of the desktop and mobile clients (see service.py)."""
