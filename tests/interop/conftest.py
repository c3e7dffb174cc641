"""The interop suite: real SIP clients (baresip, linphone-daemon, SIPp) against the real server.
Every test here is marked ``interop`` (run alone with ``pytest -m interop tests/interop``)."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "sip"))


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)
