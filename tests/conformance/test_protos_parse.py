"""All 4,527 PROTOS c07-sip INVITEs, rendered as protos_run.py does, fed to the parser.

Each is parsed or refused with SipParseError (nothing else, no hang); where it parses, its
SDP body is parsed or refused with SdpError. A second pass must not grow memory.
"""
import argparse
import collections
import gc
import importlib.util
import time
import tracemalloc

import pytest

from hpbx._fast import sdp, sipmsg
from hpbx.errors import SdpError, SipParseError

NCASES = 4527
UDP_MAX = 65507


@pytest.fixture(scope="module")
def rendered(shared_testdata):
    path = shared_testdata / "protos" / "protos_run.py"
    spec = importlib.util.spec_from_file_location("protos_run", path)
    protos_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protos_run)
    cases = protos_run.load_cases(str(shared_testdata / "protos" / "c07-sip-r2-cases.tar.gz"))
    args = argparse.Namespace(to="1000@127.0.0.1:5080", local_ip="127.0.0.1", local_port=5070,
                              from_uri=None, run_id="hpbxtest", teardown_method="CANCEL")
    filler = protos_run.Filler(args)
    groups = protos_run.load_groups()
    return [(c, groups.get(c, "?"), *filler.render(c, cases[c])) for c in sorted(cases)]


def feed(invite):
    """'ok', 'sip <status>' or 'sdp' (SIP accepted, SDP refused)."""
    try:
        m = sipmsg.parse(invite)
        m.request_uri, m.from_addr, m.to_addr, m.vias, m.contacts, m.headers()
    except SipParseError as e:
        assert isinstance(e.status, int) and e.reason
        return f"sip {e.status}"
    if m.content_type == "application/sdp" and m.body:
        try:
            sdp.parse(m.body)
        except SdpError as e:
            assert str(e)
            return "sdp"
    return "ok"


def run_all(rendered):
    verdicts = {}
    slowest = 0.0
    for case, group, invite, teardown in rendered:
        t0 = time.perf_counter()
        verdicts[case] = (group, feed(invite))
        if len(invite) > UDP_MAX:
            # what a UDP sender cuts it to (protos_run.py send --max-pdu)
            feed(invite[:UDP_MAX])
        slowest = max(slowest, time.perf_counter() - t0)
        try:
            sipmsg.parse(teardown)
        except SipParseError:
            pass
    return verdicts, slowest


def test_every_case_parses_or_is_refused(rendered):
    assert len(rendered) == NCASES
    verdicts, slowest = run_all(rendered)
    assert slowest < 1.0, f"a case took {slowest:.3f} s"
    # the reference INVITE is valid at both layers
    assert verdicts[0] == ("valid", "ok")
    by_group = collections.defaultdict(collections.Counter)
    for group, v in verdicts.values():
        by_group[group][v] += 1
    # a malformed start line or Via is never accepted
    for group in ("sip-method", "sip-version", "sip-via-hostcolon", "sip-via-version"):
        assert by_group[group]["ok"] < sum(by_group[group].values()), group
    assert by_group["sip-version"]["sip 505"] > 0
    # the cases that mutate only SDP leave the SIP layer valid (apart from the size limit)
    for group, counts in by_group.items():
        if group.startswith("sdp-"):
            assert not any(k.startswith("sip") and k != "sip 413" for k in counts), (group, counts)
    # broadcast or garbage connection addresses never pass the SDP parser
    assert by_group["sdp-connection-ip"]["sdp"] > 0
    assert by_group["sdp-media-port"]["sdp"] > 0
    big = [c for c, _, inv, _ in rendered if len(inv) > sipmsg.MAX_MESSAGE]
    assert big and all(verdicts[c][1].startswith("sip") for c in big)


def test_second_pass_does_not_grow_memory(rendered):
    sample = rendered[::3]
    for _, _, invite, _ in sample:
        feed(invite)
    gc.collect()
    tracemalloc.start()
    try:
        for _, _, invite, _ in sample:
            feed(invite)
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            for _, _, invite, _ in sample:
                feed(invite)
        gc.collect()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert second - first < 64 * 1024, (first, second)
