"""hpbx.pbx.stored.rebuild: a user read back from the store's document equals the validated
user it was written from, for varied users (every flag, forwarding with windows, details,
pickup/supervise lists); documents it cannot take as they are go the careful way; a restart
of a real store gives the same directory as before."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from hpbx.errors import ValidationError
from hpbx.pbx import stored
from hpbx.pbx.model import User, UserFlags
from hpbx.pbx.provisioning import Provisioning
from hpbx.store import Store

DEMO = str(Path(__file__).resolve().parents[2] / "config" / "demo.toml")


def varied_users(n: int) -> list[User]:
    rnd = random.Random(7)
    flag_names = [f.name for f in dataclasses.fields(UserFlags)]
    out = []
    for i in range(n):
        doc = {"tenant": "t", "username": f"user{i}", "sip_password": f"secret-{i}",
               "internal_number": str(100 + i), "max_calls": rnd.randrange(0, 5),
               "displayed_number_diversion": rnd.choice(["displayed", "original_caller", "dialled"]),
               "flags": {name: rnd.random() < 0.3 for name in flag_names},
               "pickup": [f"user{j}" for j in range(rnd.randrange(0, 3))],
               "supervise": [f"user{j}" for j in range(rnd.randrange(0, 3))]}
        if i % 3 == 0:
            doc["details"] = {"first_name": f"F{i}", "name": "Muster", "email": f"u{i}@example.com",
                              "mobile": "0791234567"}
        if i % 4 == 0:
            doc["forward"] = {"busy": "0441234567", "no_answer": "201", "no_answer_after": 15,
                              "windows": {"busy": {"days": ["mon", "tue"], "time_start": "08:00",
                                                   "time_end": "17:00"}}}
        if i % 5 == 0:
            doc["cti_password"] = "cti-pw"
        out.append(User.from_dict(doc))
    return out


def test_rebuild_equals_the_validated_user():
    for user in varied_users(200):
        for compact in (False, True):
            assert stored.rebuild(User, user.to_dict(compact)) == user


def test_equal_flags_are_shared_objects():
    a, b = (stored.rebuild(User, {"tenant": "t", "username": n, "sip_password": "pw-1234",
                                  "flags": {"dnd": True}}) for n in ("a1", "b1"))
    assert a.flags == UserFlags(dnd=True) and a.flags is b.flags


def test_documents_it_cannot_take_go_through_from_dict():
    # an unknown key: from_dict's own error, naming the key
    with pytest.raises(ValidationError, match="colour"):
        stored.rebuild(User, {"tenant": "t", "username": "x1", "sip_password": "pw-1234", "colour": 1})
    # a required field missing: from_dict's error
    with pytest.raises(ValidationError, match="sip_password"):
        stored.rebuild(User, {"tenant": "t", "username": "x1"})
    # a null value: the careful way (which takes it as the default)
    u = stored.rebuild(User, {"tenant": "t", "username": "x1", "sip_password": "pw-1234",
                              "internal_number": None})
    assert u.internal_number == ""
    # nested documents are still validated (once per distinct content)
    with pytest.raises(ValidationError, match="flags.fly"):
        stored.rebuild(User, {"tenant": "t", "username": "x1", "sip_password": "pw-1234",
                              "flags": {"fly": True}})


def test_restart_reads_the_same_directory(tmp_path):
    path = tmp_path / "db.sqlite3"
    prov = Provisioning(Store(path))
    prov.import_file(DEMO)
    prov.tenant_create({"name": "big"})
    for u in varied_users(60):
        prov.user_create({**u.to_dict(), "tenant": "big", "username": "big-" + u.username,
                          "pickup": [], "supervise": []})
    before = {u.username: u for t in prov.directory.tenants() for u in prov.directory.users_of(t.name)}
    prov.store.close()
    again = Provisioning(Store(path))
    after = {u.username: u for t in again.directory.tenants() for u in again.directory.users_of(t.name)}
    assert after == before and len(after) >= 60
    again.store.close()
