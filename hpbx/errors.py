"""The one exception hierarchy of hpbx, used by Python and the compiled modules alike.

This module imports nothing from hpbx, so that ``hpbx._fast`` may raise these classes.
"""


class HpbxError(Exception):
    """Base of every error hpbx raises on purpose."""


class SipParseError(HpbxError):
    """A SIP message could not be parsed.

    ``status`` is the SIP status a server answers with (400, 413, 416, 420, 505, ...).
    """

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __reduce__(self):
        return (type(self), (self.reason, self.status))


class SdpError(HpbxError):
    """An SDP body could not be parsed or rewritten."""


class ConfigError(HpbxError):
    """The server settings file is missing or invalid. The message names file, key and problem."""


class ValidationError(HpbxError):
    """Provisioning data is invalid. ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFoundError(HpbxError):
    """A provisioned object does not exist."""

    def __init__(self, kind: str, key):
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class RelayError(HpbxError):
    """The RTP relay refused a command (no free ports, unknown stream, ...)."""
