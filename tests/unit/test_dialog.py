"""Dialog state (RFC 3261 §12) of the B2BUA's legs, over real parsed messages."""
from hpbx._fast import sipmsg
from hpbx.sip.dialog import Dialog
from hpbx.sip.transaction import Target

INVITE = (b"INVITE sip:0441110000@pbx.example SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport\r\n"
          b"Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"
          b"From: \"Caller\" <sip:0311112222@carrier.example>;tag=from1\r\n"
          b"To: <sip:0441110000@pbx.example>\r\nCall-ID: a-leg@carrier\r\nCSeq: 7 INVITE\r\n"
          b"Contact: <sip:caller@10.0.0.5:5060>\r\nContent-Length: 0\r\n\r\n")

OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb\r\n"
      b"Record-Route: <sip:q1.example;lr>\r\nRecord-Route: <sip:q2.example;lr>\r\n"
      b"From: <sip:0311112222@127.0.0.1>;tag=ours\r\nTo: <sip:anna@127.0.0.1>;tag=theirs\r\n"
      b"Call-ID: b-leg@hpbx\r\nCSeq: 1 INVITE\r\nContact: <sip:anna@10.1.1.1:5062>\r\n"
      b"Content-Length: 0\r\n\r\n")

TARGET = Target("udp", "10.0.0.5", 5060)


def test_uas_dialog_from_invite_and_bye_headers():
    d = Dialog.uas(sipmsg.parse(INVITE), "tag9", TARGET, "<sip:hpbx@127.0.0.1>")
    assert (d.call_id, d.remote_tag, d.remote_target, d.remote_cseq) == (
        "a-leg@carrier", "from1", "sip:caller@10.0.0.5:5060", 7)
    h = dict((n, v) for n, v in d.headers("BYE") if n != "Route")
    assert h["From"] == "<sip:0441110000@pbx.example>;tag=tag9"
    assert h["To"] == '"Caller" <sip:0311112222@carrier.example>;tag=from1'
    assert h["Call-ID"] == "a-leg@carrier" and h["CSeq"].endswith(" BYE")
    # UAS: the route set is the Record-Route in order
    assert [v for n, v in d.headers("BYE") if n == "Route"] == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]


def test_uac_dialog_learns_tag_target_and_reversed_routes():
    d = Dialog.uac("b-leg@hpbx", "ours", "<sip:0311112222@127.0.0.1>", "<sip:anna@127.0.0.1>",
                   "sip:anna@10.1.1.9:5062", 1, TARGET, "<sip:hpbx@127.0.0.1>")
    d.update_from_response(sipmsg.parse(OK))
    assert (d.remote_tag, d.remote_target) == ("theirs", "sip:anna@10.1.1.1:5062")
    assert d.route_set == ["<sip:q2.example;lr>", "<sip:q1.example;lr>"]
    cseqs = [int(dict(d.headers("INFO"))["CSeq"].split()[0]) for _ in range(2)]
    assert cseqs == [2, 3]


def test_remote_cseq_must_not_go_back():
    d = Dialog.uas(sipmsg.parse(INVITE), "tag9", TARGET, "<sip:hpbx@127.0.0.1>")
    assert d.accept_remote_cseq(8) and not d.accept_remote_cseq(7) and d.accept_remote_cseq(9)
