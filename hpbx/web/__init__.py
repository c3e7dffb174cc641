"""The HTTP face (aiohttp): /rpc over the admin method table, the admin page, phone
provisioning, /metrics."""
