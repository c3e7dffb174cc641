"""Digest authentication details a SIPp scenario cannot steer: SHA-256, stale nonces, replayed
nonce-counts, Min-Expires, a non-SIP AOR. A plain UDP phone talks to the real server."""
from __future__ import annotations

import time

import pytest

from harness import HpbxServer, RawPhone, digest_authorization, header

NONCE_TTL = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HpbxServer(tmp_path_factory.mktemp("auth"), users=[("dora", "dora-pw"), ("emil", "emil-pw")],
                     flags={"dora": {"sha256_digest": True}}, sip_extra={"nonce_ttl": NONCE_TTL})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def phone(server):
    with RawPhone(server.host, server.port) as p:
        yield p


def register(phone, server, user, extra=(), expires=300, branch=None, cseq=None):
    ruri = f"sip:{server.host}:{server.port}"
    phone.request("REGISTER", ruri, [f"Contact: <sip:{user}@{phone.host}:{phone.port}>",
                                     f"Expires: {expires}", *extra],
                  to_uri=f"sip:{user}@{server.host}", from_user=user, branch=branch, cseq=cseq)
    return phone.recv_until(lambda m: not m.startswith("SIP/2.0 100"))


def challenge_for(reply, algorithm):
    return next(c for c in header(reply, "WWW-Authenticate") if f"algorithm={algorithm}" in c)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_register_with_each_algorithm(server, phone, algorithm):
    ruri = f"sip:{server.host}:{server.port}"
    reply = register(phone, server, "dora")
    assert reply.startswith("SIP/2.0 401"), reply
    assert offered(reply) == ["SHA-256", "MD5"]  # flags.sha256_digest: RFC 8760 order
    auth = digest_authorization(challenge_for(reply, algorithm), "dora", "dora-pw", "REGISTER", ruri)
    reply = register(phone, server, "dora", [f"Authorization: {auth}"])
    assert reply.startswith("SIP/2.0 200"), reply
    assert any(f"sip:dora@127.0.0.1:{phone.port}" in c for c in header(reply, "Contact"))


def offered(reply):
    return [c.split("algorithm=")[1].split(",")[0] for c in header(reply, "WWW-Authenticate")]


def test_a_user_without_sha256_phones_is_offered_md5_alone(server, phone):
    """The default (flags.sha256_digest off): one MD5 challenge, which phones that give up on
    two challenges (baresip 1.0) answer; SHA-256 stays enabled, so an answer with it counts."""
    ruri = f"sip:{server.host}:{server.port}"
    reply = register(phone, server, "emil")
    assert offered(reply) == ["MD5"], reply
    unknown = register(phone, server, "nobody")
    assert offered(unknown) == ["MD5"], unknown
    auth = digest_authorization(challenge_for(reply, "MD5"), "emil", "emil-pw", "REGISTER", ruri,
                                algorithm="SHA-256")
    assert "algorithm=SHA-256" in auth
    reply = register(phone, server, "emil", [f"Authorization: {auth}"])
    assert reply.startswith("SIP/2.0 200"), reply


def test_sha256_wrong_password_is_403(server, phone):
    ruri = f"sip:{server.host}:{server.port}"
    reply = register(phone, server, "dora")
    auth = digest_authorization(challenge_for(reply, "SHA-256"), "dora", "wrong", "REGISTER", ruri)
    reply = register(phone, server, "dora", [f"Authorization: {auth}"])
    assert reply.startswith("SIP/2.0 403"), reply


def test_replayed_nonce_count_is_refused(server, phone):
    ruri = f"sip:{server.host}:{server.port}"
    challenge = challenge_for(register(phone, server, "dora"), "MD5")
    first = digest_authorization(challenge, "dora", "dora-pw", "REGISTER", ruri, nc=1)
    assert register(phone, server, "dora", [f"Authorization: {first}"]).startswith("SIP/2.0 200")
    replay = register(phone, server, "dora", [f"Authorization: {first}"])
    assert replay.startswith("SIP/2.0 401"), replay
    second = digest_authorization(challenge, "dora", "dora-pw", "REGISTER", ruri, nc=2)
    assert register(phone, server, "dora", [f"Authorization: {second}"]).startswith("SIP/2.0 200")


def test_expired_nonce_is_stale(server, phone):
    ruri = f"sip:{server.host}:{server.port}"
    challenge = challenge_for(register(phone, server, "dora"), "MD5")
    time.sleep(NONCE_TTL + 0.3)
    auth = digest_authorization(challenge, "dora", "dora-pw", "REGISTER", ruri)
    reply = register(phone, server, "dora", [f"Authorization: {auth}"])
    assert reply.startswith("SIP/2.0 401"), reply
    assert all("stale=true" in c for c in header(reply, "WWW-Authenticate")), reply
    fresh = digest_authorization(challenge_for(reply, "MD5"), "dora", "dora-pw", "REGISTER", ruri)
    assert register(phone, server, "dora", [f"Authorization: {fresh}"]).startswith("SIP/2.0 200")


def test_interval_too_brief_is_423(server, phone):
    ruri = f"sip:{server.host}:{server.port}"
    challenge = challenge_for(register(phone, server, "emil"), "MD5")
    auth = digest_authorization(challenge, "emil", "emil-pw", "REGISTER", ruri)
    reply = register(phone, server, "emil", [f"Authorization: {auth}"], expires=3)
    assert reply.startswith("SIP/2.0 423"), reply
    assert header(reply, "Min-Expires") == ["10"]


def test_non_sip_aor_is_400(server, phone):
    ruri = f"sip:{server.host}:{server.port}"
    phone.request("REGISTER", ruri, ["Contact: <sip:x@127.0.0.1>"], to_uri="tel:+41441234567")
    reply = phone.recv_until(lambda m: not m.startswith("SIP/2.0 100"))
    assert reply.startswith("SIP/2.0 400"), reply


def test_challenge_is_stateless_and_a_retransmission_is_challenged_again(server, phone):
    # RFC 3261 §8.2.7: the 401 keeps no transaction; a retransmitted REGISTER gets a 401 with
    # the same To tag (derived from the request) and a fresh nonce, and either nonce works
    ruri = f"sip:{server.host}:{server.port}"
    first = register(phone, server, "dora", branch="z9hG4bKsame-branch-1", cseq=7)
    again = register(phone, server, "dora", branch="z9hG4bKsame-branch-1", cseq=7)
    other = register(phone, server, "dora", branch="z9hG4bKother-branch-1", cseq=7)
    assert first.startswith("SIP/2.0 401") and again.startswith("SIP/2.0 401")
    assert header(again, "To") == header(first, "To") != header(other, "To")
    assert challenge_for(again, "MD5") != challenge_for(first, "MD5")
    for n, reply in enumerate((first, again)):
        auth = digest_authorization(challenge_for(reply, "MD5"), "dora", "dora-pw", "REGISTER", ruri)
        ok = register(phone, server, "dora", [f"Authorization: {auth}"], cseq=8 + n)
        assert ok.startswith("SIP/2.0 200"), ok
