"""PostgreSQL and Redis, started once per session by the tests (see engines.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "sip"))

from engines import Postgres, Redis  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    with pg:
        yield pg


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with Redis(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture
def pg_dsn(postgres):
    """The database emptied: every table of an earlier test dropped."""
    postgres.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    return postgres.dsn


@pytest.fixture
def redis_url(redis_server):
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url
