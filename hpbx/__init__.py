"""hpbx: a hosted PBX and SIP/RTP media switch with compiled hot paths."""

__version__ = "0.1.0"
