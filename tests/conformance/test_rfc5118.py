"""RFC 5118 IPv6 torture messages (../shared/testdata/rfc5118).

The wire/ copies are the messages as they travel; the archive copies use bare LF line endings
(and two have no empty line), which the parser refuses: RFC 3261 7 requires CRLF.
"""
import csv

import pytest

from hpbx._fast import sdp, sipmsg
from hpbx.errors import SipParseError


def wire(shared_testdata, name):
    return sipmsg.parse((shared_testdata / "rfc5118" / "wire" / f"{name}.dat").read_bytes())


def decode_all(m):
    m.request_uri, m.from_addr, m.to_addr, m.vias, m.contacts, m.headers()
    return m


def check_ipv6_good(m):
    u = m.request_uri
    assert (m.method, u.host, u.port, u.user) == ("REGISTER", "2001:db8::10", 0, None)
    assert m.via_host == "2001:db8::9:1" and m.vias[0].sent_by == "[2001:db8::9:1]"
    assert m.contacts[0].uri.host == "2001:db8::1" and str(m.contacts[0].uri) == "sip:caller@[2001:db8::1]"


def check_port_ambiguous(m):
    assert (m.request_uri.host, m.request_uri.port) == ("2001:db8::10:5070", 0)


def check_port_unambiguous(m):
    assert (m.request_uri.host, m.request_uri.port) == ("2001:db8::10", 5070)
    assert m.request_uri.hostport == "[2001:db8::10]:5070"


def check_via_received_param_with_delim(m):
    assert m.method == "BYE" and m.via_received == "2001:db8::9:255" == m.vias[0].received
    assert m.via_branch == "z9hG4bKas3-111"


def check_via_received_param_no_delim(m):
    assert m.method == "OPTIONS" and m.via_received == "2001:db8::9:255"


def check_ipv6_in_sdp(m):
    assert m.request_uri.host == "2001:db8::10" and m.content_length == 251 == len(m.body)
    media = sdp.parse(m.body).media[0]
    assert (media.connection, media.addrtype) == ("2001:db8::20", "IP6")


def check_mult_ip_in_header(m):
    vs = m.vias
    assert [(v.transport, v.host, v.port) for v in vs] == [
        ("UDP", "2001:db8::9:1", 6050), ("UDP", "192.0.2.1", 0), ("TCP", "2001:db8::9:255", 0)]
    assert vs[2].received == "192.0.2.200" and (m.via_host, m.via_port) == ("2001:db8::9:1", 6050)


def check_mult_ip_in_sdp(m):
    s = sdp.parse(m.body)
    assert [(x.connection, x.addrtype) for x in s.media] == [("192.0.2.1", "IP4"), ("2001:db8::1", "IP6")]


def check_ipv4_mapped_ipv6(m):
    assert [(v.host, v.port) for v in m.vias] == [("::ffff:192.0.2.10", 19823), ("::ffff:192.0.2.2", 0)]
    assert m.contacts[0].uri.host == "::ffff:192.0.2.2" and m.contacts[0].display == "T. desk phone"
    assert sdp.parse(m.body).media[0].connection == "::ffff:192.0.2.2"


def check_ipv6_bug_abnf_3_colons(m):
    assert m.request_uri.host == "2001:db8:::192.0.2.1" and m.to_addr.uri.host == "2001:db8:::192.0.2.1"


def check_ipv6_correct_abnf_2_colons(m):
    assert m.request_uri.host == "2001:db8::192.0.2.1"


VALID = {name[6:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_case_is_covered(shared_testdata):
    with open(shared_testdata / "rfc5118" / "EXPECTED.tsv", newline="") as fh:
        rows = {r["name"]: r["valid_or_invalid"] for r in csv.DictReader(fh, delimiter="\t")}
    assert set(rows) == set(VALID) | {"ipv6-bad"}
    assert all(v == "valid" for k, v in rows.items() if k != "ipv6-bad") and rows["ipv6-bad"] == "invalid"


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_wire_copy(shared_testdata, name):
    VALID[name](decode_all(wire(shared_testdata, name)))


def test_ipv6_without_brackets_is_refused(shared_testdata):
    with pytest.raises(SipParseError) as ei:
        wire(shared_testdata, "ipv6-bad")
    assert (ei.value.status, ei.value.reason) == (400, "invalid Request-URI: invalid host")


@pytest.mark.parametrize("name", sorted(VALID) + ["ipv6-bad"])
def test_archive_copies_with_bare_lf_are_refused(shared_testdata, name):
    data = (shared_testdata / "rfc5118" / f"{name}.dat").read_bytes()
    assert b"\r\n" not in data
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse(data)
    assert (ei.value.status, ei.value.reason) == (400, "line not terminated by CRLF")
    # with CRLF the header section is the wire copy's (which only fixes line endings, the
    # missing empty line and three wrong Content-Length values, see README)
    def section(raw):
        head = raw.split(b"\r\n\r\n", 1)[0].rstrip(b"\r\n")
        return [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length")]

    wire_data = (shared_testdata / "rfc5118" / "wire" / f"{name}.dat").read_bytes()
    assert section(data.replace(b"\n", b"\r\n")) == section(wire_data)
