"""JSON-RPC 2.0 as hpbx speaks it on the admin socket: error codes and the error type.

One JSON object (or batch array) per line, UTF-8, newline-terminated, in both directions.
Server and hpbxctl share these definitions.
"""
from __future__ import annotations

from typing import Any

import orjson

PARSE_ERROR = -32700  # the line is not JSON
INVALID_REQUEST = -32600  # JSON, but not a request object (or the line is too long)
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602  # data.field names the parameter (dotted path), data.reason says why
INTERNAL_ERROR = -32603  # a bug: logged by the server, which keeps running

# Application range (-32000..-32099, implementation-defined server errors).
NOT_FOUND = -32001  # data.kind, data.key: the object named does not exist
NOT_AVAILABLE = -32002  # data.feature: that part of the server is not running
OPERATION_FAILED = -32003  # the request was valid but could not be carried out (data.reason)
PERMISSION_DENIED = -32004  # the peer's uid is not in admin.allow_uids

ERROR_NAMES = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    NOT_FOUND: "not found",
    NOT_AVAILABLE: "not available",
    OPERATION_FAILED: "operation failed",
    PERMISSION_DENIED: "permission denied",
}


class RpcError(Exception):
    """An error answered to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def invalid_params(field: str, reason: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"{field}: {reason}", {"field": field, "reason": reason})


def encode(obj: Any) -> bytes:
    """One line of the protocol. Unknown types (datetime, Path, enum) go out as strings."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"
