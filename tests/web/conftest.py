"""Fixtures of the web face tests (the rig is in webrig.py)."""
import pytest

from webrig import WebRig


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = WebRig(tmp_path_factory.mktemp("web")).start()
    yield r
    r.stop()
