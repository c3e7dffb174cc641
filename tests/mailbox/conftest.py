"""Fixtures of the mailbox tests; the helpers are in mailrig.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mailrig import SmtpSink, mail_rig  # noqa: E402


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    """A real SMTP server shared by the tests of one module."""
    s = SmtpSink(tmp_path_factory.mktemp("inbox")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rig(request, tmp_path_factory, sink):
    """The server on the module's ``TENANT``, mailing through ``sink``."""
    name = request.module.__name__.rpartition(".")[2]
    r = mail_rig(tmp_path_factory.mktemp(name), request.module.TENANT, sink.port)
    r.start()
    yield r
    r.stop()
