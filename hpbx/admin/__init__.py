"""The admin interface: the method table, the JSON-RPC socket server and hpbxctl."""
