"""Fixtures shared by every test folder."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Public SIP conformance corpora, beside the checkout (never copied into the project).
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"conformance corpora not found at {SHARED_TESTDATA} (../shared/testdata is absent)")
    return SHARED_TESTDATA
