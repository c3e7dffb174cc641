"""SIPp caller scenarios for the interop matrix, built per feature: an authenticated INVITE
(PCMU + telephone-event), a tone played from a pcap, then optionally hold (re-INVITE sendonly)
and resume (re-INVITE sendrecv), or RFC 4733 digits from the pcaps sip-tester ships."""
from __future__ import annotations

from pathlib import Path

DTMF_PCAP = "/usr/share/sip-tester/dtmf_2833_{}.pcap"

_SDP = """v=0
      o=- [call_number] {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a={direction}"""

_FROM = 'From: <sip:[field0]@[remote_ip]:[remote_port]>;tag=[pid]c[call_number]'


def _invite(cseq: int, ruri: str, to: str, extra: str, version: int, direction: str) -> str:
    return f"""  <send retrans="100">
    <![CDATA[

      INVITE {ruri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      {_FROM}
      {to}
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      {extra}
      Content-Type: application/sdp
      Content-Length: [len]

      {_SDP.format(version=version, direction=direction)}

    ]]>
  </send>
"""


def _ack(cseq: int, ruri: str, to: str, routes: str = "") -> str:
    return f"""  <send>
    <![CDATA[

      ACK {ruri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      {routes}
      {_FROM}
      {to}
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Content-Length: 0

    ]]>
  </send>
"""


_OK = """  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""


def _refer(cseq: int, refer_to: str) -> str:
    """The caller transfers blind: REFER, 202, NOTIFY sipfrag 100 (active) and 200
    (terminated), then hpbx's BYE, all checked."""
    return f"""  <send retrans="100">
    <![CDATA[

      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      [routes]
      {_FROM}
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} REFER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Refer-To: <sip:{refer_to}@[remote_ip]:[remote_port]>
      Content-Length: 0

    ]]>
  </send>
  <recv response="202"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="^SIP/2.0 100 Trying" search_in="body" check_it="true" assign_to="n1"/>
      <ereg regexp="active" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s1"/>
    </action>
  </recv>
{_OK}  <recv request="NOTIFY">
    <action>
      <ereg regexp="^SIP/2.0 200 OK" search_in="body" check_it="true" assign_to="n2"/>
      <ereg regexp="terminated" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s2"/>
    </action>
  </recv>
{_OK}  <recv request="BYE"/>
{_OK}  <Reference variables="n1,s1,n2,s2"/>
</scenario>
"""


def scenario(path: Path, tone_pcap: Path, *, hold: bool = False, digits: str = "",
             refer_to: str = "") -> Path:
    """CSV field0 = user (also -au), the service (-s) is the dialled number. ``refer_to``:
    instead of hanging up, transfer the callee there blind (REFER) and expect hpbx's BYE."""
    ruri = "sip:[service]@[remote_ip]:[remote_port]"
    to = "To: <sip:[service]@[remote_ip]:[remote_port]>"
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
             '<scenario name="hpbx interop caller">\n',
             _invite(1, ruri, to, "", 1, "sendrecv"),
             '  <recv response="100" optional="true"/>\n  <recv response="407" auth="true"/>\n',
             _ack(1, ruri, "[last_To:]"),
             _invite(2, ruri, to, "[authentication]", 1, "sendrecv"),
             '  <recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n'
             '  <recv response="183" optional="true"/>\n  <recv response="200" rrs="true"/>\n',
             _ack(2, "[next_url]", "[last_To:]", "[routes]"),
             f'  <nop><action><exec play_pcap_audio="{tone_pcap}"/></action></nop>\n'
             '  <pause milliseconds="2500"/>\n']
    cseq = 3
    if hold:
        for version, direction in ((2, "sendonly"), (3, "sendrecv")):
            parts += [_invite(cseq, "[next_url]", "[last_To:]", "[routes]", version, direction),
                      '  <recv response="100" optional="true"/>\n  <recv response="200"/>\n',
                      _ack(cseq, "[next_url]", "[last_To:]", "[routes]"),
                      '  <pause milliseconds="1500"/>\n']
            cseq += 1
    for d in digits:
        name = {"*": "star", "#": "pound"}.get(d, d)
        parts.append(f'  <nop><action><exec play_pcap_audio="{DTMF_PCAP.format(name)}"/></action></nop>\n'
                     '  <pause milliseconds="600"/>\n')
    if refer_to:
        parts.append(_refer(cseq, refer_to))
        path.write_text("".join(parts))
        return path
    parts += [f"""  <send retrans="100">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      [routes]
      {_FROM}
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} BYE
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""]
    path.write_text("".join(parts))
    return path
