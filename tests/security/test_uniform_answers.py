"""Uniform answers: a REGISTER or INVITE for an existing user, an unknown user or an unknown
domain gets the same response shape (status line, reason phrase, header names and order,
challenge parameters) after the same time, with and without (wrong) credentials; INVITEs to
unknown numbers from unauthenticated sources are challenged, not answered 404.

Nothing here depends on which digest algorithms the server offers: the cases are compared
with each other, never with a fixed list."""
from __future__ import annotations

import re
import statistics
import time
import uuid

import pytest

from harness import HpbxServer, RawPhone, digest_authorization, header

USERS = [("100", "right-password-100"), ("101", "right-password-101")]
# what a request carries that the response echoes (or makes fresh): masked before comparing
ECHOED = ("Via", "From", "To", "Call-ID", "CSeq")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HpbxServer(tmp_path_factory.mktemp("uniform"), users=USERS,
                     sip_extra={"domain": "pbx.test"})
    with srv:
        yield srv


def shape(response: str) -> tuple:
    """Status line and every header in order, echoed values and fresh tokens masked."""
    head = response.split("\r\n\r\n", 1)[0].split("\r\n")
    out = [head[0]]
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip()
        value = value.strip()
        if name in ECHOED:
            value = "<echo>" + (";tag" if name == "To" and ";tag=" in value else "")
        value = re.sub(r'nonce="[^"]*"', 'nonce="<nonce>"', value)
        out.append(f"{name}: {value}")
    return tuple(out)


def final(phone: RawPhone, timeout: float = 3.0) -> str:
    msg = phone.recv_until(lambda m: m.startswith("SIP/2.0") and not m.startswith("SIP/2.0 1"), timeout)
    assert msg is not None, "no final response"
    return msg


def register(phone: RawPhone, srv, user: str, domain: str, auth: str | None = None) -> str:
    ruri = f"sip:{domain}"
    headers = [f"Contact: <sip:{user}@{phone.host}:{phone.port}>", "Expires: 60"]
    if auth:
        headers.append(f"Authorization: {auth}")
    phone.call_id = uuid.uuid4().hex
    phone.request("REGISTER", ruri, headers, from_user=user, to_uri=f"sip:{user}@{domain}")
    return final(phone)


def register_wrong(phone, srv, user, domain) -> tuple[str, float]:
    """Answer the challenge with a wrong password: (final response, seconds it took)."""
    challenge = register(phone, srv, user, domain)
    assert challenge.startswith("SIP/2.0 401"), challenge
    value = header(challenge, "WWW-Authenticate")[0]
    auth = digest_authorization(value, user, "wrong-password", "REGISTER", f"sip:{domain}")
    t0 = time.perf_counter()
    resp = register(phone, srv, user, domain, auth)
    return resp, time.perf_counter() - t0


def invite(phone: RawPhone, srv, dialled: str, domain: str, auth: str | None = None) -> str:
    ruri = f"sip:{dialled}@{domain}"
    headers = [f"Contact: <sip:caller@{phone.host}:{phone.port}>"]
    if auth:
        headers.append(f"Proxy-Authorization: {auth}")
    phone.call_id = uuid.uuid4().hex
    text = phone.request("INVITE", ruri, headers, from_user="100")
    resp = final(phone)
    branch = re.search(r"branch=([^;\s]+)", text).group(1)
    phone.request("ACK", ruri, branch=branch, cseq=phone.cseq, from_user="100")
    return resp


CASES = {  # name -> (user, domain of the Request-URI and To)
    "existing user": ("100", "pbx.test"),
    "unknown user": ("999", "pbx.test"),
    "unknown domain": ("100", "nosuch.test"),
}


def assert_same(responses: dict[str, str]) -> None:
    shapes = {name: shape(r) for name, r in responses.items()}
    first_name, first = next(iter(shapes.items()))
    for name, s in shapes.items():
        assert s == first, f"{name} differs from {first_name}:\n{s}\n!=\n{first}"


def test_register_without_credentials_is_challenged_alike(server):
    with RawPhone(server.host, server.port) as phone:
        got = {name: register(phone, server, user, domain) for name, (user, domain) in CASES.items()}
    assert got["existing user"].startswith("SIP/2.0 401 ")
    assert header(got["existing user"], "WWW-Authenticate")
    assert_same(got)


def test_register_with_wrong_credentials_is_refused_alike(server):
    with RawPhone(server.host, server.port) as phone:
        got = {name: register_wrong(phone, server, user, domain)[0]
               for name, (user, domain) in CASES.items()}
        # a nonce this server never issued: challenged again, alike
        forged = 'Digest username="{u}", realm="pbx.test", nonce="1.2.3", uri="sip:x", response="{r}", qop=auth, nc=00000001, cnonce="c"'
        stale = {name: register(phone, server, user, domain, forged.format(u=user, r="0" * 32))
                 for name, (user, domain) in CASES.items()}
    assert got["existing user"].startswith("SIP/2.0 403 ")
    assert_same(got)
    assert stale["existing user"].startswith("SIP/2.0 401 ")
    assert_same(stale)


def test_invite_without_credentials_is_challenged_whatever_is_dialled(server):
    with RawPhone(server.host, server.port) as phone:
        got = {
            "existing user": invite(phone, server, "100", "pbx.test"),
            "unknown number": invite(phone, server, "999", "pbx.test"),
            "international": invite(phone, server, "004930123456", "pbx.test"),
            "premium": invite(phone, server, "0901123456", "pbx.test"),
            "unknown domain": invite(phone, server, "100", "nosuch.test"),
        }
    assert got["unknown number"].startswith("SIP/2.0 407 "), got["unknown number"]
    assert_same(got)


def test_invite_with_wrong_credentials_is_refused_alike(server):
    got = {}
    with RawPhone(server.host, server.port) as phone:
        for name, (user, domain) in CASES.items():
            challenge = invite(phone, server, "101", domain)
            value = header(challenge, "Proxy-Authenticate")[0]
            auth = digest_authorization(value, user, "wrong", "INVITE", f"sip:101@{domain}")
            got[name] = invite(phone, server, "101", domain, auth)
    assert got["existing user"].startswith("SIP/2.0 403 "), got["existing user"]
    assert_same(got)


def _medians_alike(samples: dict[str, list[float]]) -> tuple[bool, str]:
    medians = {name: statistics.median(v) for name, v in samples.items()}
    pooled = sorted(x for v in samples.values() for x in v)
    q1, q3 = pooled[len(pooled) // 4], pooled[3 * len(pooled) // 4]
    gap = max(medians.values()) - min(medians.values())
    # within noise: the medians lie closer than half the spread of all samples, and < 1 ms
    limit = min(0.001, max(0.0002, (q3 - q1) / 2))
    text = ", ".join(f"{n} {m * 1e6:.0f} µs" for n, m in medians.items())
    return gap <= limit, f"medians {text}; gap {gap * 1e6:.0f} µs, limit {limit * 1e6:.0f} µs"


def _timed(fn, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):  # interleaved, so that load on the box hits every case alike
        for name, (user, domain) in CASES.items():
            samples[name].append(fn(user, domain))
    return samples


@pytest.mark.parametrize("kind", ["challenge", "wrong credentials"])
def test_answers_take_the_same_time(server, kind):
    with RawPhone(server.host, server.port) as phone:
        if kind == "challenge":
            def fn(user, domain):
                t0 = time.perf_counter()
                register(phone, server, user, domain)
                return time.perf_counter() - t0
        else:
            def fn(user, domain):
                return register_wrong(phone, server, user, domain)[1]
        _timed(fn, 20)  # warm-up (HA1 cache, allocator)
        for attempt in range(3):  # a loaded box may disturb one series; a real leak shows in all
            ok, text = _medians_alike(_timed(fn, 150))
            print(f"{kind}: {text}")
            if ok:
                break
        assert ok, text
