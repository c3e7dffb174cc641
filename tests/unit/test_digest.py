"""The compiled digest core (hpbx/_fast/digest) through hpbx.sip.auth: the credentials grammar,
its own hash code against hashlib, nonce signing/expiry/rotation, replay, both algorithms, and
that malformed input gets None / CHALLENGE instead of an exception."""
from __future__ import annotations

import hashlib
import os
import types

import pytest
from hypothesis import given, settings, strategies as st

from hpbx._fast import digest as core
from hpbx.sip.auth import MAX_TRACKED_NONCES, Authenticator, Verdict, parse_digest

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


# ---- the hash code the check uses

@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_hashes_match_hashlib_across_block_boundaries(algorithm):
    for n in list(range(0, 200)) + [1000, 4097]:
        data = os.urandom(n)
        assert core.hash_hex(algorithm, data) == HASHES[algorithm](data).hexdigest(), n
    with pytest.raises(ValueError):
        core.hash_hex("SHA-1", b"")


def test_siphash_reference_vectors():
    # SipHash paper (Aumasson, Bernstein 2012) appendix A and the reference vectors.h, key 00..0f
    key = bytes(range(16))
    assert core.siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert core.siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5
    with pytest.raises(ValueError):
        core.siphash24(b"short", b"")


# ---- parse_digest: the RFC 3261 §25 / RFC 7616 grammar

def test_parse_scheme_and_names_are_case_insensitive():
    assert parse_digest('DIGEST UserName="a", REALM=r') == {"username": "a", "realm": "r"}
    assert parse_digest('digest X-Custom=1') == {"x-custom": "1"}


def test_parse_lws_around_equals_and_commas():
    value = 'Digest  username = "a" ,\trealm\t=\t"r"\r\n , nc =00000001 ,qop= auth'
    assert parse_digest(value) == {"username": "a", "realm": "r", "nc": "00000001", "qop": "auth"}
    assert parse_digest('\t Digest\tnonce="n"  ') == {"nonce": "n"}


def test_parse_quoted_strings():
    assert parse_digest('Digest uri="sip:a@b;x=1, y", qop="auth,auth-int"') == \
        {"uri": "sip:a@b;x=1, y", "qop": "auth,auth-int"}
    assert parse_digest(r'Digest username="a\"b\\c\d", realm=""') == {"username": 'a"b\\cd', "realm": ""}
    assert parse_digest('Digest username="müller", realm="ü"') == {"username": "müller", "realm": "ü"}
    # escapes in a value longer than the stack scratch buffer
    long_value = "x" * 3000 + '\\"' + "y" * 10
    assert parse_digest(f'Digest opaque="{long_value}"') == {"opaque": "x" * 3000 + '"' + "y" * 10}


def test_parse_empty_list_elements_and_bare_scheme():
    assert parse_digest("Digest ,, a=1,,b=2 ,") == {"a": "1", "b": "2"}
    assert parse_digest("Digest") == {}
    assert parse_digest("Digest a=") == {"a": ""}


def test_parse_repeated_parameter_keeps_the_last():
    assert parse_digest('Digest nc=1, nc=2') == {"nc": "2"}


@pytest.mark.parametrize("value", [
    "Basic dXNlcjpwdw==",
    'Digestusername="a"',
    'Digest"a"',
    "",
    "   ",
    'Digest username="a',           # no closing quote
    'Digest username="a\\',         # escape at the end
    "Digest username",              # no '='
    'Digest =a',                    # no name
    "Digest a=b c",                 # garbage after a value
    'Digest a="b"c',
    'Digest a=b"c"',
    'Digest a=1, Basic realm="x"',
    "Digest " + ", ".join(f"p{i}=1" for i in range(49)),   # more parameters than any client sends
])
def test_parse_malformed_is_none(value):
    assert parse_digest(value) is None


@pytest.mark.parametrize("value", [None, b'Digest a="b"', 12])
def test_parse_non_str_is_none(value):
    assert parse_digest(value) is None


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_.!%*+`'~", min_size=1, max_size=12)
VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=12), st.sampled_from([",", " , ", ",\t", " ,, "]))
def test_parse_round_trips_any_quoted_value(params, sep):
    value = "Digest " + sep.join(f"{n}={_quote(v)}" for n, v in params.items())
    expected = {}
    for name, v in params.items():  # a name repeated in another case: the last one counts
        expected[name.lower()] = v
    assert parse_digest(value) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='Digest ,="\\\t\r\nabcnu=é', max_size=60))
def test_parse_never_raises(value):
    result = parse_digest(value)
    assert result is None or all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


# ---- the authenticator

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def user(name, password):
    return types.SimpleNamespace(username=name, sip_password=password)


@pytest.fixture
def auth():
    users = {"ann": user("ann", "ann-secret"), 'q"uote': user('q"uote', "pw"), "jörg": user("jörg", "pö")}
    clock = Clock()
    a = Authenticator(users.get, "pbx.example", nonce_ttl=30, clock=clock)
    a.test_clock = clock
    a.test_users = users
    return a


def nonce_of(auth):
    return parse_digest(auth.challenge_headers()[0][1])["nonce"]


def credentials(nonce, username="ann", password="ann-secret", *, realm="pbx.example", nc="00000001",
                algorithm="MD5", uri="sip:pbx.example", method="REGISTER", cnonce="cn", qop="auth",
                drop=(), response=None, upper=False):
    h = HASHES.get(algorithm.upper(), hashlib.md5)
    ha1 = h(f"{username}:{realm}:{password}".encode()).hexdigest()
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    if response is None:
        response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()
        if upper:
            response = response.upper()
    fields = {"username": _quote(username), "realm": _quote(realm), "nonce": _quote(nonce),
              "uri": _quote(uri), "response": _quote(response), "algorithm": algorithm,
              "cnonce": _quote(cnonce), "qop": qop, "nc": nc}
    return "Digest " + ", ".join(f"{k}={v}" for k, v in fields.items() if k not in drop)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "md5", "sha-256"])
def test_valid_credentials_each_algorithm(auth, algorithm):
    nonce = nonce_of(auth)
    verdict, found, username = auth.check("REGISTER", credentials(nonce, algorithm=algorithm))
    assert verdict is Verdict.OK and found is auth.test_users["ann"] and username == "ann"


def test_algorithm_defaults_to_md5_and_response_hex_in_any_case(auth):
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, drop=("algorithm",)))[0] is Verdict.OK
    assert auth.check("REGISTER", credentials(nonce, nc="00000002", upper=True))[0] is Verdict.OK


def test_invite_escaped_and_utf8_usernames(auth):
    nonce = nonce_of(auth)
    verdict, found, username = auth.check("INVITE", credentials(nonce, 'q"uote', "pw", method="INVITE"))
    assert verdict is Verdict.OK and username == 'q"uote'
    verdict, found, username = auth.check("REGISTER", credentials(nonce, "jörg", "pö", nc="00000002"))
    assert verdict is Verdict.OK and username == "jörg" and found is auth.test_users["jörg"]
    # the method is part of HA2: REGISTER credentials do not authorize an INVITE
    assert auth.check("INVITE", credentials(nonce, nc="00000002"))[0] is Verdict.FORBIDDEN


@pytest.mark.parametrize("field", ["username", "realm", "nonce", "uri", "response", "qop", "nc"])
def test_missing_field_is_challenged(auth, field):
    nonce = nonce_of(auth)
    verdict, found, _ = auth.check("REGISTER", credentials(nonce, drop=(field,)))
    assert verdict is Verdict.CHALLENGE and found is None


@pytest.mark.parametrize("change", [
    {"realm": "other.example"}, {"algorithm": "MD5-sess"}, {"algorithm": "SHA-512-256"},
    {"qop": "auth-int"}, {"qop": "AUTH"}, {"nc": "0000000g"}, {"nc": "1" * 17}, {"nc": '""'},
    {"username": ""},
])
def test_unusable_credentials_are_challenged(auth, change):
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, **change))[0] is Verdict.CHALLENGE


def test_disabled_algorithm_is_challenged(auth):
    auth.configure("pbx.example", 30, ("MD5",))
    assert [v for _, v in auth.challenge_headers()] and \
        all("algorithm=MD5" in v for _, v in auth.challenge_headers())
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, algorithm="SHA-256"))[0] is Verdict.CHALLENGE
    assert auth.check("REGISTER", credentials(nonce))[0] is Verdict.OK


def test_wrong_password_and_unknown_user_are_forbidden(auth):
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, password="nope")) == (Verdict.FORBIDDEN, None, "ann")
    assert auth.check("REGISTER", credentials(nonce, "nobody", "x")) == (Verdict.FORBIDDEN, None, "nobody")
    # the right answer for an unknown user's empty password is still refused
    assert auth.check("REGISTER", credentials(nonce, "nobody", ""))[0] is Verdict.FORBIDDEN
    short = credentials(nonce, response="abc")
    assert auth.check("REGISTER", short)[0] is Verdict.FORBIDDEN


def test_user_without_password_never_authenticates(auth):
    auth.test_users["nopw"] = user("nopw", None)
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, "nopw", "None"))[0] is Verdict.FORBIDDEN
    assert auth.check("REGISTER", credentials(nonce, "nopw", ""))[0] is Verdict.FORBIDDEN


def test_replayed_or_reordered_nonce_count_is_challenged(auth):
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce, nc="00000005"))[0] is Verdict.OK
    assert auth.check("REGISTER", credentials(nonce, nc="00000005"))[0] is Verdict.CHALLENGE
    assert auth.check("REGISTER", credentials(nonce, nc="00000003"))[0] is Verdict.CHALLENGE
    assert auth.check("REGISTER", credentials(nonce, nc="00000006"))[0] is Verdict.OK
    # a failed attempt does not consume a nonce-count
    assert auth.check("REGISTER", credentials(nonce, nc="00000007", password="x"))[0] is Verdict.FORBIDDEN
    assert auth.check("REGISTER", credentials(nonce, nc="00000007"))[0] is Verdict.OK


def test_nonce_expiry_is_stale(auth):
    nonce = nonce_of(auth)
    auth.test_clock.now += 29.9
    assert auth.check("REGISTER", credentials(nonce))[0] is Verdict.OK
    auth.test_clock.now += 0.2
    verdict, found, username = auth.check("REGISTER", credentials(nonce, nc="00000002"))
    assert verdict is Verdict.STALE and found is None and username == "ann"
    # stale is decided before the password is looked at (the client only needs a new nonce)
    assert auth.check("REGISTER", credentials(nonce, password="x"))[0] is Verdict.STALE


def test_replay_is_refused_across_a_generation_swap(auth):
    auth.test_clock.now += 25
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce))[0] is Verdict.OK
    auth.test_clock.now += 6    # past nonce_ttl since the table started: the next count swaps
    assert auth.check("REGISTER", credentials(nonce_of(auth)))[0] is Verdict.OK
    # the first nonce's count now lives in the old generation and still refuses a replay
    assert auth.check("REGISTER", credentials(nonce))[0] is Verdict.CHALLENGE
    assert auth.check("REGISTER", credentials(nonce, nc="00000002"))[0] is Verdict.OK


def test_count_rotation_makes_nonces_before_the_kept_generation_stale(auth):
    auth.max_tracked_nonces = 1
    first = nonce_of(auth)
    assert auth.check("REGISTER", credentials(first))[0] is Verdict.OK
    auth.test_clock.now += 0.01
    assert auth.check("REGISTER", credentials(nonce_of(auth)))[0] is Verdict.OK   # swap 1
    auth.test_clock.now += 0.01
    later = nonce_of(auth)
    assert auth.check("REGISTER", credentials(later))[0] is Verdict.OK    # swap 2 drops first's
    # first's count went with the dropped generation: it is stale, not fresh again
    assert auth.check("REGISTER", credentials(first, nc="00000002"))[0] is Verdict.STALE
    assert auth.check("REGISTER", credentials(later, nc="00000002"))[0] is Verdict.OK


def test_forged_and_foreign_nonces_are_challenged(auth):
    nonce = nonce_of(auth)
    ms, counter, tag = nonce.split(".")
    other = Authenticator(auth.test_users.get, "pbx.example", 30, clock=auth.test_clock)
    forged = [
        f"{int(ms, 16) + 1000:x}.{counter}.{tag}",     # moved issue time
        f"{ms}.{counter}.{tag[:-1]}{'0' if tag[-1] != '0' else '1'}",
        f"{ms}.{counter}.{tag.upper()}",
        f"{ms}.{counter}",
        nonce + "0",
        "." * 20,
        nonce_of(other),                               # another process's key
    ]
    for bad in forged:
        assert auth.check("REGISTER", credentials(bad))[0] is Verdict.CHALLENGE, bad


def test_nonce_shape_and_uniqueness(auth):
    nonces = {nonce_of(auth) for _ in range(1000)}
    assert len(nonces) == 1000
    for nonce in list(nonces)[:5]:
        ms, counter, tag = nonce.split(".")
        assert int(ms, 16) == 1_000_000 and len(tag) == 16 and int(tag, 16) >= 0 and int(counter, 16) > 0


def test_challenge_headers_text(auth):
    headers = auth.challenge_headers("Proxy-Authenticate")
    nonce = parse_digest(headers[0][1])["nonce"]
    assert headers == [
        ("Proxy-Authenticate", f'Digest realm="pbx.example", nonce="{nonce}", qop="auth", algorithm=MD5'),
        ("Proxy-Authenticate", f'Digest realm="pbx.example", nonce="{nonce}", qop="auth", algorithm=SHA-256'),
    ]
    stale = auth.challenge_headers(stale=True)
    assert [h for h, _ in stale] == ["WWW-Authenticate"] * 2
    assert all(v.endswith(", stale=true") for _, v in stale)
    assert parse_digest(stale[0][1])["nonce"] != nonce


def test_realm_with_quotes_round_trips(auth):
    auth.configure('my "pbx"\\x', 30, ("SHA-256", "MD5"))
    headers = auth.challenge_headers()
    assert [parse_digest(v)["algorithm"] for _, v in headers] == ["SHA-256", "MD5"]
    params = parse_digest(headers[0][1])
    assert params["realm"] == 'my "pbx"\\x'
    assert auth.check("REGISTER", credentials(params["nonce"], realm=params["realm"],
                                              algorithm="SHA-256"))[0] is Verdict.OK


def test_ha1_cache_follows_password_and_realm(auth):
    ann = auth.test_users["ann"]
    assert auth.ha1(ann, "MD5") == hashlib.md5(b"ann:pbx.example:ann-secret").hexdigest()
    assert auth.ha1(ann, "SHA-256") == hashlib.sha256(b"ann:pbx.example:ann-secret").hexdigest()
    with pytest.raises(KeyError):
        auth.ha1(ann, "SHA-1")
    nonce = nonce_of(auth)
    assert auth.check("REGISTER", credentials(nonce))[0] is Verdict.OK
    auth.test_users["ann"] = user("ann", "new-secret")
    assert auth.check("REGISTER", credentials(nonce, nc="00000002"))[0] is Verdict.FORBIDDEN
    assert auth.check("REGISTER", credentials(nonce, "ann", "new-secret", nc="00000002"))[0] is Verdict.OK
    auth.configure("new.example", 30, ("MD5",))
    assert auth.realm == "new.example" and auth.algorithms == ("MD5",) and auth.nonce_ttl == 30
    assert auth.ha1(auth.test_users["ann"], "MD5") == hashlib.md5(b"ann:new.example:new-secret").hexdigest()
    # credentials for the old realm are challenged, not refused
    assert auth.check("REGISTER", credentials(nonce_of(auth), "ann", "new-secret"))[0] is Verdict.CHALLENGE


def test_configure_rejects_unknown_algorithms(auth):
    with pytest.raises(ValueError, match="SHA-1"):
        auth.configure("pbx.example", 30, ("MD5", "SHA-1"))
    with pytest.raises(ValueError):
        auth.configure("pbx.example", 30, ())
    assert auth.algorithms == ("MD5", "SHA-256")


def test_tracked_nonce_bound_default_and_rotation(auth):
    assert auth.max_tracked_nonces == MAX_TRACKED_NONCES
    auth.max_tracked_nonces = 2
    nonces = []
    for _ in range(5):
        auth.test_clock.now += 0.01
        nonces.append(nonce_of(auth))
        assert auth.check("REGISTER", credentials(nonces[-1]))[0] is Verdict.OK
        assert auth.tracked_nonces <= 4
    # the newest generation still refuses its replays
    assert auth.check("REGISTER", credentials(nonces[-1]))[0] is Verdict.CHALLENGE


@pytest.mark.parametrize("value", [
    None, "", 42, b"Digest", "Basic xyz", "Digest", 'Digest username="ann', "Digest a=b c",
    'Digest username="ann", realm="pbx.example", nonce="1.2.3", uri="x", response="00"',
    "Digest " + "x=1," * 200,
])
def test_malformed_credentials_are_challenged(auth, value):
    verdict, found, _ = auth.check("REGISTER", value)
    assert verdict is Verdict.CHALLENGE and found is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_credentials_never_raise(data):
    users = {"ann": user("ann", "ann-secret")}
    auth = Authenticator(users.get, "pbx.example", 30, clock=Clock())
    good = credentials(nonce_of(auth))
    pos = data.draw(st.integers(0, len(good)))
    cut = data.draw(st.integers(0, 8))
    insert = data.draw(st.text(alphabet='",=\\ \tDigstéx0', max_size=6))
    mutated = good[:pos] + insert + good[pos + cut:]
    verdict, found, _ = auth.check("REGISTER", mutated)
    assert isinstance(verdict, Verdict)
    assert (verdict is Verdict.OK) == (found is not None)


def test_challenge_offers_the_enabled_algorithms_it_is_asked_for(auth):
    """The offer (per user, hpbx.sip.auth.challenge_for) picks enabled algorithms in its own
    order; one that is not enabled is left out, and an offer of none gives every enabled one."""
    algs = lambda headers: [parse_digest(v)["algorithm"] for _, v in headers]  # noqa: E731
    assert algs(auth.challenge_headers(offer=("MD5",))) == ["MD5"]
    assert algs(auth.challenge_headers(offer=("SHA-256", "MD5"))) == ["SHA-256", "MD5"]
    auth.configure("pbx.example", 30, ("SHA-256",))
    assert algs(auth.challenge_headers(offer=("MD5",))) == ["SHA-256"]
    assert algs(auth.challenge_headers(offer=("SHA-256", "MD5"))) == ["SHA-256"]
