"""Unit tests of the SIP core pieces that need no socket: the timer wheel, digest parsing and
verdicts, Via received/rport, transaction matching keys."""
from __future__ import annotations

import asyncio
import hashlib
import types

import pytest

from hpbx.sip.auth import Authenticator, Verdict, parse_digest
from hpbx.sip.timers import TimerWheel


def test_timer_wheel_fires_in_order_never_early_and_cancels():
    async def main():
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop, resolution=0.005)
        fired = []
        start = loop.time()
        for delay in (0.05, 0.01, 0.03, 0.03):
            wheel.call_later(delay, lambda d=delay: fired.append((d, loop.time() - start)))
        dropped = wheel.call_later(0.02, fired.append, "cancelled")
        dropped.cancel()
        await asyncio.sleep(0.12)
        wheel.close()
        return fired

    fired = asyncio.run(main())
    assert [d for d, _ in fired] == [0.01, 0.03, 0.03, 0.05]
    for delay, at in fired:
        assert delay - 0.003 <= at <= delay + 0.05, fired


def test_timer_wheel_holds_many_timers_with_one_loop_handle():
    async def main():
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop, resolution=0.01)
        count = [0]
        for i in range(100_000):
            wheel.call_later(0.02 + (i % 50) / 1000, lambda: count.__setitem__(0, count[0] + 1))
        assert len(wheel) == 100_000
        handles = len(loop._scheduled)
        await asyncio.sleep(0.15)
        return count[0], handles

    fired, handles = asyncio.run(main())
    assert fired == 100_000
    assert handles <= 2  # the wheel's own handle (plus asyncio.sleep's)


def test_parse_digest_fast_path_and_full_grammar():
    value = ('Digest username="100000",realm="hpbx",nonce="a.b.c",uri="sip:127.0.0.1",'
             'response="00ff",qop=auth,nc=00000001,cnonce="x",algorithm=MD5')
    p = parse_digest(value)
    assert p["username"] == "100000" and p["qop"] == "auth" and p["nc"] == "00000001"
    assert parse_digest('Digest username="a,b", realm="r r"') == {"username": "a,b", "realm": "r r"}
    assert parse_digest(r'Digest username="a\"b", realm=""') == {"username": 'a"b', "realm": ""}
    assert parse_digest("Basic dXNlcjpwdw==") is None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def answer(challenge_value, user, password, nc=1, algorithm="MD5", uri="sip:pbx"):
    params = parse_digest(challenge_value)
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
    ha1 = h(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = h(f"REGISTER:{uri}".encode()).hexdigest()
    resp = h(f"{ha1}:{params['nonce']}:{nc:08x}:cn:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{resp}", qop=auth, nc={nc:08x}, cnonce="cn", algorithm={algorithm}')


@pytest.fixture
def auth():
    users = {"ann": types.SimpleNamespace(username="ann", sip_password="ann-secret")}
    clock = Clock()
    a = Authenticator(users.get, "pbx.example", nonce_ttl=30, clock=clock)
    a.test_clock = clock
    return a


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_verdicts(auth, algorithm):
    [md5, sha] = auth.challenge_headers()
    challenge = (md5 if algorithm == "MD5" else sha)[1]
    assert auth.check("REGISTER", None)[0] is Verdict.CHALLENGE
    ok = answer(challenge, "ann", "ann-secret", algorithm=algorithm)
    verdict, user, _ = auth.check("REGISTER", ok)
    assert verdict is Verdict.OK and user.username == "ann"
    # the same nonce-count again is a replay
    assert auth.check("REGISTER", ok)[0] is Verdict.CHALLENGE
    assert auth.check("REGISTER", answer(challenge, "ann", "ann-secret", nc=2,
                                         algorithm=algorithm))[0] is Verdict.OK
    assert auth.check("REGISTER", answer(challenge, "ann", "wrong", nc=3,
                                         algorithm=algorithm))[0] is Verdict.FORBIDDEN
    # unknown user: the same verdict as a wrong password
    assert auth.check("REGISTER", answer(challenge, "nobody", "x", algorithm=algorithm))[0] is Verdict.FORBIDDEN
    auth.test_clock.now += 31
    assert auth.check("REGISTER", answer(challenge, "ann", "ann-secret", nc=4,
                                         algorithm=algorithm))[0] is Verdict.STALE


def test_forged_nonce_is_challenged(auth):
    challenge = auth.challenge_headers()[0][1]
    forged = challenge.replace('nonce="', 'nonce="f')
    assert auth.check("REGISTER", answer(forged, "ann", "ann-secret"))[0] is Verdict.CHALLENGE


def test_stale_flag_in_challenge(auth):
    assert all("stale=true" in v for _, v in auth.challenge_headers(stale=True))
    assert not any("stale" in v for _, v in auth.challenge_headers())


def test_nonce_counter_table_is_bounded(auth):
    auth.max_tracked_nonces = 3
    auth.test_clock.now += 0.01
    first = auth.challenge_headers()[0][1]
    assert auth.check("REGISTER", answer(first, "ann", "ann-secret", nc=1))[0] is Verdict.OK
    for _ in range(7):  # a flood of fresh nonces rotates the counter table twice
        auth.test_clock.now += 0.01
        fresh = auth.challenge_headers()[0][1]
        assert auth.check("REGISTER", answer(fresh, "ann", "ann-secret"))[0] is Verdict.OK
    assert auth.tracked_nonces <= 6
    # the first nonce's counter may be forgotten: it must not be usable again (stale instead)
    assert auth.check("REGISTER", answer(first, "ann", "ann-secret", nc=2))[0] is Verdict.STALE


def test_registrar_sweep_removes_expired_bindings(tmp_path):
    from hpbx import settings as settings_mod
    from hpbx.sip.registrar import Registrar
    from hpbx.store.registrations import Binding, RegistrationStore

    clock = Clock()
    store = RegistrationStore(tmp_path / "reg.sqlite3")

    def binding(user, contact, expires_in):
        return Binding(user, contact, "t", None, None, None, clock.now + expires_in, clock.now,
                       "127.0.0.1", 5060, "udp", 0, None, None, "cid", 1, False)

    store.write_batch([binding("u1", "sip:a@h", 10), binding("u1", "sip:b@h", 100),
                       binding("u2", "sip:c@h", 5)], [])

    async def main():
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop)
        reg = Registrar(loop, wheel, store, None, settings_mod.from_dict({}), clock=clock)
        assert reg.start() == 3
        clock.now += 20
        assert [b.contact for b in reg.lookup("u1")] == ["sip:b@h"]  # filtered before the sweep
        reg._sweep()
        await asyncio.sleep(0)  # the batch commits in the next loop iteration
        await asyncio.sleep(0)
        reg.stop()
        wheel.close()
        return {u: [b.contact for b in bs] for u, bs in reg.bindings.items()}

    assert asyncio.run(main()) == {"u1": ["sip:b@h"]}
    assert [r[:2] for r in store.all()] == [("u1", "sip:b@h")]
