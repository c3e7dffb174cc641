"""Media services tests: the real server, SIPp for signalling, Python RTP sockets as media."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE.parent, HERE.parent / "sip", HERE.parent / "unit"):
    sys.path.insert(0, str(p))
