"""The PBX domain: model, slot selection, routing, provisioning, calls. No sockets, no SQL."""
