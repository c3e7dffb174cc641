"""[store] settings of the shared backends: defaults, and errors that name the key."""
import pytest

from hpbx import settings
from hpbx.errors import ConfigError


def test_default_is_the_embedded_sqlite_store():
    s = settings.from_dict({}).store
    assert (s.backend, s.dsn, s.redis, s.cdr_retention_days) == ("sqlite", "", "", 0)


def test_postgres_and_redis():
    s = settings.from_dict({"store": {"backend": "postgres", "dsn": "dbname=hpbx", "redis": "unix:///r.sock",
                                      "node": "a", "cdr_retention_days": 90}}).store
    assert (s.backend, s.dsn, s.redis, s.node, s.cdr_retention_days) == ("postgres", "dbname=hpbx",
                                                                         "unix:///r.sock", "a", 90)


@pytest.mark.parametrize("table, key, words", [
    ({"backend": "mysql"}, "store.backend", "must be one of sqlite, postgres"),
    ({"backend": "postgres"}, "store.dsn", "is required"),
    ({"redis": "localhost:6379"}, "store.redis", "must be a redis://"),
    ({"cdr_retention_days": -1}, "store.cdr_retention_days", "between 0 and"),
    ({"dns": "x"}, "store.dns", "unknown key"),
])
def test_errors_name_the_key(table, key, words):
    with pytest.raises(ConfigError) as info:
        settings.from_dict({"store": table}, "hpbx.toml")
    assert f"hpbx.toml: {key}: " in str(info.value) and words in str(info.value)
