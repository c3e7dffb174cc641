"""The mail tests' fixture: a real SMTP server (tests/mail/mailsink.py) per test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from mailsink import SmtpSink  # noqa: E402,F401  (the fixture below, and the tests import it)


@pytest.fixture
def smtp_sink(tmp_path):
    sink = SmtpSink(tmp_path / "inbox")
    yield sink
    sink.stop()
