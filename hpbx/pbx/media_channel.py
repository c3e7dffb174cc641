"""Media channels: a call answered *at hpbx* with a service (a coroutine) running on its audio.

This is the one way media services are written (announcements, Voice2Mail, conferences,
FollowMe/callthrough, fax...). The service is an ``async def service(ch: MediaChannel)``;
the channel does the SIP side (answer with an SDP of the relay endpoint, ACK, CANCEL, BYE,
re-INVITE/UPDATE incl. hold, session timers, BYE when the service is done, the CDR) and the
service only says what to play, record, collect, mix.

Registry (services attach without editing calls.py)::

    from hpbx.pbx import media_channel
    media_channel.register_service("conference", my_conference)    # number usage -> service
    media_channel.register_star_code("*201", play_announcement)     # dialled "*201" + digits [+ "#"]
    media_channel.register_step("announcement_before", factory)     # see "Steps" below

A number whose usage (``numbers.usage``: fax, conference, followme, ...) has a registered
service is answered by it; a usage without one is still refused with 480 "number usage ...
not available". A star-code service gets ``ch.star_code`` (the prefix) and ``ch.star_arg`` (the
digits after it, without the terminating ``#``; phones send ``#`` as ``%23`` or literally).
Operators (and the tests) can load further service modules at start: every module named in
the ``HPBX_SERVICE_MODULES`` environment variable (comma separated) is imported once the call
service exists, and its ``register(call_service)`` (if any) is called. A later registration of
the same usage or prefix replaces the earlier one (logged).

Answer modes (decided here, see README "Media channel"):

* ``answer="answered"`` (services: the default): 200 OK with our SDP; the CDR's answer time is
  then, and the call is billed as answered by ``service:<name>``.
* ``answer="early"``: 183 Session Progress with our SDP (no 100rel: phones and trunks play it
  as early media) and no answer: the caller is not billed while it hears an announcement
  before ringing. Only an early channel can be handed back to the B2BUA (``ring``): its INVITE
  transaction is still open, so the ringing ``Call`` takes it over, with the same relay
  session; leg "a" switches from the endpoint back to relaying (continuous SSRC/seq/ts).
  If an early service ends without ring(), the caller gets ``final_status`` (default 480).

Service API (all on ``ch``; coroutines are marked async)::

    ch.id, ch.tenant, ch.caller, ch.caller_user, ch.plan, ch.dialled, ch.language, ch.codec
    await ch.answer()                      done by the runner before the service starts
    await ch.play(prompts, barge_in="", loop=False) -> str   the barge-in digit or ""
                                           prompts: engine prompt names (str or list); missing
                                           ones are skipped and logged (the call goes on)
    ch.play_start(prompts, loop=True)      start without waiting (music); ch.stop_play()
    await ch.collect_digits(max=1, timeout=5.0, terminator="#", first_timeout=None) -> str
                                           digits typed ahead (also during play) count; stops at
                                           max digits, the terminator (not returned) or a timeout
    await ch.record(path, max_ms=60000, silence_ms=0, stop_digits="#", beep=False) -> dict
                                           the record_done data: path, ms, reason, digit
    await ch.tone(name, loop=False)        TONES of the engine (ringback, busy, beep, ...); with
                                           loop=True it starts and returns at once
    ch.send_dtmf(digits, duration_ms=100)  RFC 4733 towards the caller
    ch.join_room(room) / ch.leave_room() / ch.mute(bool)    engine rooms (conference mixer)
    await ch.next_event(kinds=None, timeout=None)            raw engine events of this call
    ch.clear_digits()                      forget digits typed ahead
    await ch.sleep(seconds)
    await ch.ring(rows, plan=None)         early channel only: ring rows (router.Row tuple)
                                           with relayed audio; returns the Call (the channel
                                           is done: the service should return); the Call
                                           keeps ``early_codec``: the caller has early media
                                           from hpbx (ring-back is played while it rings)
    await ch.hangup(reason="service ended")  BYE (answered) or final_status (early); the
                                           service coroutine may also just return
    ch.held                                True while the caller holds the call (re-INVITE)
    ch.result                              a short text the service sets: it goes into the CDR

Outbound (hpbx calls somebody and runs a service when they answer)::

    ch = media_channel.dial(call_service, target, tenant, caller, service, name="invite")

``target`` is ``user:<username>``, an internal number of ``tenant`` (the user's most recent
online device is called) or an external number (0... / +..., through the tenant's trunk,
admitted by the toll-fraud limits like a diversion; ``caller`` is presented, it should be one
of the tenant's public numbers). hpbx offers PCMA, PCMU and telephone-event from the relay's
leg "a"; on a 2xx it ACKs, ends leg "a" at the media endpoint in the answered codec and runs
``service(ch)`` on an ``OutboundChannel`` (the same API as above; ``ch.caller`` is the called
party). A failure (final >= 300, no answer in ``ring_secs``, ``ch.hangup()`` while it rings:
CANCEL) ends the channel with a CDR and calls ``on_failed(ch, status)`` if given. A bad or
refused target raises ValidationError naming ``target`` before anything is sent. The call is
in ``call.list`` from the INVITE on and ``call.hangup`` ends it. Not done: digest
authentication towards a trunk that challenges, parallel ringing of a user's devices.

A caller's BYE or CANCEL (or a media timeout, or ``call.hangup`` by the administrator) ends
the channel: the service task is cancelled (CancelledError inside its current await; use
try/finally for clean-up), the relay session is deleted (ports, players, recorders go with it:
a recording in progress completes with reason "hangup"), the CDR is written.

Steps (the call flow runs a media step before/after ringing rows): ``run_step(svc, tx, plan,
...)`` is how calls.py asks "is there a step for this plan"; the registered factory returns a
service coroutine or None. Issue 10's announcement slot steps register here.

After the rows (``register_after_rows(factory)``): when a call's rows end unanswered (not a
CANCEL), call.py asks ``after_rows(call, status)``; ``factory(call, status)`` returns
``(name, service)`` or None. A service taking over answers the caller's still open INVITE
itself, on the call's relay session (ports and latching kept); the ringing Call ends without
a final response and without a CDR of its own: the channel's CDR keeps its start and the
targets it tried. Voice2Mail and the user mailbox (hpbx.pbx.voicemail) register here.
Issue 10's steps (hpbx/pbx/announcements.py): ``run_step(step, svc, tx, plan, ...)``
(step "slot": before the rows ring, or a slot without rows) and ``after_step(call, step)``
(step "announcement_after", asked after ``after_rows``); their factory returns None, a
service coroutine, or (service, answer mode, name).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from hpbx.errors import HpbxError, NotFoundError, SdpError
from hpbx.pbx import anchor
from hpbx.sip.dialog import Dialog, OkResender, cancel_with_reason
from hpbx.sip.transaction import Target

log = logging.getLogger("hpbx.pbx.media_channel")

Service = Callable[["MediaChannel"], Awaitable[None]]

RINGING, ANSWERED, ENDED = "ringing", "answered", "ended"  # the same words as hpbx.pbx.call
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"

_services: dict[str, tuple[str, Service, str]] = {}  # usage -> (name, service, answer mode)
_admit: dict[str, Callable] = {}  # usage -> admit(call_service, plan) -> None | (status, reason)
_screen: dict[str, Callable] = {}  # usage -> screen(call_service, plan, caller, caller_user) -> same
_star_codes: dict[str, tuple[str, Service]] = {}  # prefix -> (name, service)
_steps: dict[str, Callable] = {}  # step name -> factory(svc, plan, ...) -> Service | None
_loaded_modules = False

_CODECS = {"PCMA": 8, "PCMU": 0, "G722": 9}
MIN_SE = 90


# ---------------------------------------------------------------------- registry
def register_service(usage: str, service: Service, *, name: str = "", answer: str = "answered",
                     admit: Callable | None = None, screen: Callable | None = None) -> None:
    """Numbers of ``usage`` are answered by ``service`` (``answer`` "answered" or "early").
    ``admit(call_service, plan)``, when given, runs before anything is answered: it returns
    None to go on or (status, reason) to refuse the call (e.g. a fax number without a mail
    address: 480), with a CDR like any refused call. ``screen(call_service, plan, caller,
    caller_user)`` is the same check for services that admit by who calls (FollowMe and
    callthrough: an unknown caller gets 403 before anything is answered)."""
    if answer not in ("answered", "early"):
        raise ValueError("answer must be 'answered' or 'early'")
    if usage in _services:
        log.info("media service for usage %r replaced", usage)
    _services[usage] = (name or usage, service, answer)
    if admit is not None:
        _admit[usage] = admit
    else:
        _admit.pop(usage, None)
    if screen is not None:
        _screen[usage] = screen
    else:
        _screen.pop(usage, None)


def unregister_service(usage: str) -> None:
    _services.pop(usage, None)
    _admit.pop(usage, None)
    _screen.pop(usage, None)


def service_for(usage: str):
    return _services.get(usage)


def register_star_code(prefix: str, service: Service, *, name: str = "") -> None:
    """A user dialling ``prefix`` (+ digits, + optional ``#``) is answered by ``service``."""
    if not prefix.startswith("*"):
        raise ValueError("a star code starts with '*'")
    if prefix in _star_codes:
        log.info("star code %r replaced", prefix)
    _star_codes[prefix] = (name or prefix, service)


def star_code_for(dialled: str):
    """(prefix, argument, name, service) for a registered star code, longest prefix first."""
    d = dialled.replace("%23", "#")
    for prefix in sorted(_star_codes, key=len, reverse=True):
        if d.startswith(prefix):
            arg = d[len(prefix):]
            if arg.endswith("#"):
                arg = arg[:-1]
            if arg and not re.fullmatch(r"[0-9*]*", arg):
                continue
            name, service = _star_codes[prefix]
            return prefix, arg, name, service
    return None


def register_step(step: str, factory: Callable) -> None:
    """``factory(call_service, plan)`` returns a Service to run at that step, or None."""
    _steps[step] = factory


def step_for(step: str, svc, plan):
    factory = _steps.get(step)
    if factory is None:
        return None
    try:
        return factory(svc, plan)
    except Exception:
        log.exception("media step %s failed to start: skipped", step)
        return None


def run_step(step: str, svc, tx, plan, caller, caller_user, trunk, *, media=None) -> bool:
    """calls.py: run the media step ``step`` for ``plan`` if one is registered and its factory
    wants it; True when a channel took the caller's INVITE. The factory returns None, a
    Service, or (Service, answer mode, name)."""
    found = step_for(step, svc, plan)
    if found is None:
        return False
    service, answer, name = (found if isinstance(found, tuple) else (found, "answered", step))
    start(svc, tx, plan, caller, caller_user, trunk, service, name=name, answer=answer, media=media)
    return True


def after_step(call, step: str) -> bool:
    """call.py: the rows are exhausted and no after_rows service took the caller; if ``step``
    wants it, a channel answers the caller on the call's relay session (take_over)."""
    svc = call.service
    if call.state != RINGING:
        return False
    found = step_for(step, svc, call.plan)
    if found is None:
        return False
    service, _answer, name = (found if isinstance(found, tuple) else (found, "answered", step))
    if call.media is not None and svc.media.is_terminated(call.id, "a"):
        svc.media.stop_tone(call.id, "a")  # the ring-back of a caller with early media
    take_over(call, service, name=name)
    return True


def register_after_rows(factory: Callable | None) -> None:
    """``factory(call, status)`` -> (name, Service) or None (see "After the rows")."""
    _steps["after_rows"] = factory


def after_rows(call, status: int) -> bool:
    """call.py: ``call``'s rows ended unanswered with ``status``; True when a service took the
    caller over (the Call is then ended quietly: no final response, no CDR)."""
    factory = _steps.get("after_rows")
    if factory is None or call.state != RINGING:
        return False
    try:
        found = factory(call, status)
    except Exception:
        log.exception("[%s] after-rows step failed to start: skipped", call.id)
        return False
    if found is None:
        return False
    name, service = found
    take_over(call, service, name=name)
    return True


def _end_for_service(call, name: str) -> None:
    """A Call handed to a media service ends without a final response or BYE to its caller:
    state, end time and reason, and its timers stopped."""
    call.state = ENDED  # the same word as hpbx.pbx.call.ENDED
    call.end_iso = _iso()
    call.end_reason = f"to service {name}"
    for attr in ("timer", "a_ok", "max_timer"):
        t = getattr(call, attr, None)
        if t is not None:
            t.cancel()
            setattr(call, attr, None)


def take_over(call, service: Service, *, name: str) -> "MediaChannel | None":
    """Answer a ringing ``Call``'s caller with ``service`` on the call's own relay session."""
    svc = call.service
    _end_for_service(call, name)
    for leg in call.legs.values():
        svc.legs.pop(leg.call_id, None)
    svc.legs.pop(call.id, None)
    svc.calls.pop(call.id, None)
    svc.blf.changed(call, ended=True)
    if svc.toll is not None:
        svc.toll.release(call.id)
    if svc.owners is not None:
        svc.owners.ended(call)
    svc.stats["calls_started"] -= 1  # counted once, when the Call started
    media = call.media
    ch = start(svc, call.a_tx, call.plan, call.caller, call.caller_user, call.from_trunk, service,
               name=name, media=media, before=lambda ch: _inherit(ch, call))
    return ch


def take_over_answered(call, service: Service, *, name: str, plan=None) -> "MediaChannel":
    """An answered ``Call``'s caller (leg "a", its dialog with hpbx kept) is handed to
    ``service`` (a blind transfer whose target failed, to the target's mailbox): the call's
    CDR is written as it stands, the far side gets a BYE (after what the caller of this
    function sends it in the same loop iteration), the channel carries on in the caller's
    dialog with the same relay session (leg "a" terminated), CDR of its own at its end."""
    svc = call.service
    far = call.winner.dialog if call.winner is not None else None
    ch = MediaChannel(svc, call.a_tx, plan or call.plan, call.caller, call.caller_user, call.from_trunk,
                      name=name, mode="answered")
    ch.media = call.media
    ch.codec = negotiated(call.a_msg.body, call.winner.last.body if call.winner is not None
                          and call.winner.last is not None else b"")
    # the call as it was ends here (its CDR), without BYE to the caller and keeping the media
    _end_for_service(call, name)
    for user in call._users_in_call():
        svc.count_active(user, -1)
    for leg in call.legs.values():
        svc.legs.pop(leg.call_id, None)
    svc.legs.pop(call.id, None)
    svc.call_ended(call)
    if far is not None:
        svc.loop.call_soon(call._send_bye, far, None)
    # the channel: answered already, in the caller's dialog
    ch.a_dialog = call.a_dialog
    ch.to_tag = call.a_dialog.local_tag
    ch.state = ANSWERED
    ch.answer_iso = _iso()
    ch.winner = ch
    ch.targets_tried = list(call.targets_tried)
    svc.calls[ch.id] = ch
    svc.legs[ch.id] = (ch, "a")
    if ch.caller_user is not None:
        svc.count_active(ch.caller_user.username, 1)
    ch._terminate()
    svc.dialog_changed(ch)
    ch.task = svc.loop.create_task(ch._run(service))
    log.info("[%s] answered call handed to media service %s", ch.id, name)
    return ch


def negotiated(offer: bytes, answer: bytes) -> dict:
    """The codec both sides agreed on: the answer's first one the offer has (parse_offer's dict)."""
    try:
        mine = parse_offer(offer)
    except (HpbxError, ValueError):
        return {"codec": "PCMA", "pt": 8, "dtmf_pt": 101, "ptime": 20}
    try:
        theirs = parse_offer(answer)
    except (HpbxError, ValueError):
        return mine
    text = offer.decode("latin-1")
    offered = re.search(r"(?m)^m=audio \d+ [A-Z/]+ ([0-9 ]+)", text)
    pts = offered.group(1).split() if offered else []
    if str(theirs["pt"]) in pts:
        return {**theirs, "dtmf_pt": mine["dtmf_pt"] if theirs["dtmf_pt"] is None else theirs["dtmf_pt"]}
    return mine


def _inherit(ch, call) -> None:
    ch.start_iso, ch.start_time = call.start_iso, call.start_time
    ch.targets_tried = list(call.targets_tried)


def load_modules(call_service) -> None:
    """Import the service modules named in HPBX_SERVICE_MODULES (once)."""
    global _loaded_modules
    if _loaded_modules:
        return
    _loaded_modules = True
    for name in filter(None, (n.strip() for n in os.environ.get("HPBX_SERVICE_MODULES", "").split(","))):
        try:
            mod = importlib.import_module(name)
            reg = getattr(mod, "register", None)
            if reg is not None:
                reg(call_service)
            log.info("media service module %s loaded", name)
        except Exception:
            log.exception("media service module %s not loaded", name)


# ---------------------------------------------------------------------- entry points (calls.py)
def dispatch_usage(svc, tx, plan, caller, caller_user, trunk) -> bool:
    """calls.py: a number of a usage other than telephone; True when a service took the call."""
    found = _services.get(plan.kind)
    if found is None:
        return False
    name, service, answer = found
    admit = _admit.get(plan.kind)
    screen = _screen.get(plan.kind)
    refusal = None
    try:
        if admit is not None:
            refusal = admit(svc, plan)
        if not refusal and screen is not None:
            refusal = screen(svc, plan, caller, caller_user)
    except Exception:
        log.exception("admit check of media service %s failed: refused", name)
        refusal = (500, "Service Check Failed")
    if refusal:
        ch = MediaChannel(svc, tx, plan, caller, caller_user, trunk, name=name, mode=answer)
        svc.calls[ch.id] = ch
        svc.stats["calls_started"] += 1
        ch._refuse(refusal[0], refusal[1])
        return True
    start(svc, tx, plan, caller, caller_user, trunk, service, name=name, answer=answer)
    return True


def dispatch_star(svc, tx, user, dialled: str, plan_factory) -> bool:
    """calls.py: a registered star code dialled by ``user``; True when a service took it."""
    found = star_code_for(dialled)
    if found is None:
        return False
    prefix, arg, name, service = found
    plan = plan_factory()
    ch = start(svc, tx, plan, user.internal_number or user.username, user, None, service,
               name=name, answer="answered")
    if ch is not None:
        ch.star_code, ch.star_arg = prefix, arg
    return True


def start(svc, tx, plan, caller, caller_user, trunk, service: Service, *, name: str,
          answer: str = "answered", media=None, before=None) -> "MediaChannel | None":
    """Answer ``tx`` with a media channel and run ``service`` on it (None: the call was refused).
    ``before(ch)`` runs before the channel is prepared (take_over: the call's start time)."""
    ch = MediaChannel(svc, tx, plan, caller, caller_user, trunk, name=name, mode=answer)
    if media is not None:
        ch.media = media
    if before is not None:
        before(ch)
    svc.calls[ch.id] = ch
    svc.stats["calls_started"] += 1
    if not ch.prepare():
        return None
    ch.task = svc.loop.create_task(ch._run(service))
    return ch


def _iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ChannelEnded(HpbxError):
    """The channel's call has ended (raised by API calls made after the end)."""


def parse_offer(body: bytes) -> dict:
    """Codec choice from an offer's first audio stream: {codec, pt, dtmf_pt, ptime}."""
    text = body.decode("latin-1").replace("\r\n", "\n")
    m = re.search(r"(?m)^m=audio \d+ [A-Z/]+ ([0-9 ]+)$", text)
    if m is None:
        raise SdpError("SDP has no audio stream")
    pts = [int(p) for p in m.group(1).split()]
    rtpmap = {int(pt): enc.split("/")[0].upper()
              for pt, enc in re.findall(r"(?m)^a=rtpmap:(\d+) (\S+)", text)}
    from hpbx._fast.relay import CODECS
    chosen = None
    for pt in pts:
        enc = rtpmap.get(pt) or {8: "PCMA", 0: "PCMU", 9: "G722"}.get(pt)
        if enc in _CODECS and enc in CODECS:
            chosen = (enc, pt)
            break
    if chosen is None:
        raise SdpError("no common codec (PCMA, PCMU, G722)")
    dtmf = next((pt for pt in pts if rtpmap.get(pt) == "TELEPHONE-EVENT"), None)
    pm = re.search(r"(?m)^a=ptime:(\d+)", text)
    ptime = int(pm.group(1)) if pm else 20
    return {"codec": chosen[0], "pt": chosen[1], "dtmf_pt": dtmf,
            "ptime": ptime if ptime in (10, 20, 30) else 20}


class MediaChannel:
    """One caller answered by hpbx (see the module doc). Looks like a ``Call`` to CallService
    (call.list, call.hangup, CDR, BLF, media timeout)."""

    def __init__(self, svc, tx, plan, caller, caller_user, trunk, *, name: str, mode: str):
        self.service = svc
        self.engine = svc.media
        self.id = tx.msg.call_id
        self.a_tx = tx
        self.a_msg = tx.msg
        self.a_target = Target(tx.channel.kind, tx.addr[0], tx.addr[1], tx.channel.id)
        self.a_dialog: Dialog | None = None
        self.plan = plan
        self.tenant = plan.tenant
        self.dialled = plan.dialled
        self.caller = caller
        self.caller_user = caller_user
        self.from_trunk = trunk
        self.name = name
        self.mode = mode
        self.state = RINGING
        self.legs: dict = {}
        self.winner = None
        self.media = None
        self.task: asyncio.Task | None = None
        self.codec: dict = {}
        self.held = False
        self.result = ""
        self.final_status = 480
        self.star_code = ""
        self.star_arg = ""
        self.start_iso = _iso()
        self.start_time = time.time()
        self.answer_iso = ""
        self.end_iso = ""
        self.end_reason = ""
        self.handed_to = None  # the Call that took the caller over (ring)
        # set by a service: called with the body of a re-INVITE/UPDATE; returns our SDP answer
        # (it took the offer), None (handled as an audio re-offer) or raises HpbxError (488)
        self.on_reoffer: Callable[[bytes], bytes | None] | None = None
        self.targets_tried: list[str] = []  # of the Call this channel took over (take_over)
        self._ok: OkResender | None = None  # our 200, re-sent until the ACK
        self._se_timer = None
        self.session_expires = 0
        self._sdp_version = 1
        self._late_offer = False
        self._acked: asyncio.Future | None = None
        self.to_tag = ""
        a_host, a_port = svc.transports.local_address(tx.channel.kind, tx.addr[0])
        transport = "" if tx.channel.kind == "udp" else f";transport={tx.channel.kind}"
        self.a_contact = f"<sip:{plan.dialled or 'hpbx'}@{_uri_host(a_host)}:{a_port}{transport}>"

    @property
    def language(self) -> str:
        try:
            tenant = self.service.provisioning.directory.tenant(self.tenant)
            return getattr(tenant, "language", "") or "en"
        except Exception:
            return "en"

    # ------------------------------------------------------------------ SIP side
    def prepare(self) -> bool:
        """Relay session, codec from the offer, leg a terminated; False (and answered) if not."""
        body = self.a_msg.body
        try:
            if self.media is None:
                self.media = self.engine.allocate(self.id)
        except HpbxError as exc:
            log.warning("[%s] no media ports: %s", self.id, exc)
            self._refuse(503, "No Media Ports")
            return False
        if body:
            try:
                peer = anchor.peer(body)
                self.codec = parse_offer(body)
                self.engine.offer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                  rtcp_mux=peer.rtcp_mux)
                self.held = peer.hold
                if peer.hold:
                    self.engine.set_hold(self.id, True)
            except HpbxError as exc:
                self._refuse(488, None, f"bad SDP: {exc}")
                return False
        else:
            self._late_offer = True  # we offer in the 200, the caller answers in its ACK
            if self.mode == "early":
                self._refuse(488, None, "early media needs an offer")
                return False
            self.codec = {"codec": "PCMA", "pt": 8, "dtmf_pt": 101, "ptime": 20}
        self._terminate()
        self.a_tx.on_cancel = self._on_cancel
        return True

    def _terminate(self) -> None:
        c = self.codec
        self.engine.terminate(self.id, "a", codec=c["codec"], pt=c["pt"], ptime_ms=c["ptime"],
                              dtmf_pt=c["dtmf_pt"], inband=c["codec"] != "G722")

    def _refuse(self, status: int, reason: str | None, why: str = "") -> None:
        self.a_tx.respond(status, reason)
        self._end(f"{status} {why or reason or ''}".strip())

    def sdp(self, direction: str = "sendrecv") -> bytes:
        ms = self.media
        host = ms.address_for(self.a_target.host)
        ip = "IP6" if ":" in host else "IP4"
        c = self.codec
        if self._late_offer and not self.answer_iso:
            fmts = [(8, "PCMA/8000"), (0, "PCMU/8000")]
        else:
            fmts = [(c["pt"], f"{c['codec']}/8000")]
        dtmf = c.get("dtmf_pt")
        pts = " ".join(str(p) for p, _ in fmts) + (f" {dtmf}" if dtmf is not None else "")
        lines = ["v=0", f"o=hpbx {abs(hash(self.id)) % 10**9} {self._sdp_version} IN {ip} {host}",
                 "s=hpbx", f"c=IN {ip} {host}", "t=0 0", f"m=audio {ms.port_a} RTP/AVP {pts}"]
        lines += [f"a=rtpmap:{p} {enc}" for p, enc in fmts]
        if dtmf is not None:
            lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-15"]
        lines += [f"a=ptime:{c['ptime']}", f"a={direction}"]
        return ("\r\n".join(lines) + "\r\n").encode()

    def session_lines(self) -> tuple[list[str], str]:
        """The session part of a new SDP of ours (version moved on) and our media address, for a
        service writing its own answer (on_reoffer)."""
        self._sdp_version += 1
        host = self.media.address_for(self.a_target.host)
        ip = "IP6" if ":" in host else "IP4"
        return (["v=0", f"o=hpbx {abs(hash(self.id)) % 10**9} {self._sdp_version} IN {ip} {host}",
                 "s=hpbx", f"c=IN {ip} {host}", "t=0 0"], host)

    def _session_timer_headers(self) -> list:
        msg = self.a_msg
        se = msg.header("Session-Expires")
        if not se:
            return []
        try:
            secs = int(se.split(";")[0].strip())
        except ValueError:
            return []
        secs = max(secs, MIN_SE)
        self.session_expires = secs
        supported = (msg.header("Supported") or "").replace(" ", "").split(",")
        if "timer" in supported:
            return [("Session-Expires", f"{secs};refresher=uac"), ("Require", "timer"),
                    ("Supported", "timer")]
        return [("Session-Expires", f"{secs};refresher=uas"), ("Supported", "timer")]

    def _arm_session_timer(self) -> None:
        if self._se_timer is not None:
            self._se_timer.cancel()
            self._se_timer = None
        if self.session_expires and self.state != ENDED:
            # RFC 4028 §10: BYE if no refresh by expiry minus min(32, SE/3)
            wait = self.session_expires - min(32, self.session_expires / 3)
            self._se_timer = self.service.wheel.call_later(wait, self.guarded, self.hangup_now,
                                                           "session timer expired")

    async def answer(self) -> None:
        """200 OK (answered) or 183 (early) with our SDP; idempotent."""
        if self.state != RINGING or self.a_dialog is not None and self.mode == "answered":
            return
        svc = self.service
        headers = [("Contact", self.a_contact), ("Allow", ALLOW), ("Content-Type", "application/sdp")]
        if self.mode == "early":
            self.a_tx.respond(183, None, headers, self.sdp())
            self.to_tag = self.a_tx.to_tag
            return
        headers += self._session_timer_headers()
        direction = "sendrecv"
        data = self.a_tx.respond(200, None, headers, self.sdp(direction))
        self.to_tag = self.a_tx.to_tag
        self.state = ANSWERED
        self.answer_iso = _iso()
        self.winner = self  # what CallService.on_in_dialog checks: the dialog is established
        self.a_dialog = Dialog.uas(self.a_msg, self.a_tx.to_tag, self.a_target, self.a_contact)
        svc.legs[self.id] = (self, "a")
        if self.caller_user is not None:
            svc.count_active(self.caller_user.username, 1)
        svc.dialog_changed(self)
        self._acked = svc.loop.create_future()
        self._ok = OkResender(svc.wheel, svc.loop, svc.transactions, self.a_tx, data,
                              lambda: self.guarded(self.hangup_now, "no ACK from caller"))
        if not self._ok.pending and not self._late_offer:
            self._acked.set_result(True)
        self._arm_session_timer()
        log.info("[%s] answered by media service %s (%s)", self.id, self.name, self.codec.get("codec"))
        if self._late_offer:
            await asyncio.wait_for(asyncio.shield(self._acked), 64 * svc.transactions.t1)

    def on_ack(self, msg) -> None:
        if msg.cseq != self.a_msg.cseq:
            return
        if self._ok is not None:
            self._ok.cancel()
        if self._late_offer and msg.body:
            try:
                peer = anchor.peer(msg.body)
                self.codec = parse_offer(msg.body)
                self.engine.offer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                  rtcp_mux=peer.rtcp_mux)
                self._terminate()
            except HpbxError as exc:
                log.info("[%s] answer in ACK not usable: %s", self.id, exc)
                self.hangup_now("bad SDP in ACK")
                return
        self._late_offer = False
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(True)

    def _on_cancel(self, tx) -> None:
        if self.state != RINGING:
            return
        self.a_tx.respond(487)
        self._end("caller cancelled")

    def guarded(self, method, *args) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("[%s] media channel failed in %s", self.id, method.__name__)
            self._end("internal error")

    def in_dialog(self, side, tx) -> None:
        msg = tx.msg
        if self.state != ANSWERED:
            tx.respond(481)
            return
        if not self.a_dialog.accept_remote_cseq(msg.cseq):
            tx.respond(500, "CSeq Out of Order")
            return
        method = msg.method
        if method == "BYE":
            tx.respond(200)
            self._end("caller hung up")
            return
        if msg.contacts:
            self.a_dialog.remote_target = str(msg.contacts[0].uri)
        if method in ("INVITE", "UPDATE"):
            direction = "sendrecv"
            headers = [("Contact", self.a_contact), ("Allow", ALLOW)]
            on_reoffer = getattr(self, "on_reoffer", None)  # (OutboundChannel: set by its service)
            if msg.body and on_reoffer is not None:
                # the service answers offers it knows (the fax: m=image udptl t38)
                try:
                    own = on_reoffer(msg.body)
                except HpbxError as exc:
                    tx.respond(488, None)
                    log.info("[%s] re-offer refused by the service: %s", self.id, exc)
                    return
                if own is not None:
                    self._arm_session_timer()
                    headers.append(("Content-Type", "application/sdp"))
                    tx.respond(200, None, headers, own)
                    return
            if msg.body:
                try:
                    peer = anchor.peer(msg.body)
                    self.engine.set_peer(self.id, "a", peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                         rtcp_mux=peer.rtcp_mux)
                    self.engine.relatch(self.id, "a")
                    self.engine.set_hold(self.id, peer.hold)
                except HpbxError as exc:
                    tx.respond(488, None)
                    log.info("[%s] re-offer not usable: %s", self.id, exc)
                    return
                held = peer.hold
                direction = {"sendonly": "recvonly", "inactive": "inactive",
                             "recvonly": "sendonly"}.get(peer.direction, "sendrecv")
                if peer.host in ("0.0.0.0", "::"):
                    direction = "inactive" if peer.direction == "inactive" else "recvonly"
                if held != self.held:
                    self._sdp_version += 1
                    self.held = held
                    log.info("[%s] caller %s", self.id, "holds" if held else "resumes")
            if self.session_expires and msg.header("Session-Expires"):
                headers += [("Session-Expires", f"{self.session_expires};refresher=uac"),
                            ("Require", "timer")]
            self._arm_session_timer()
            headers.append(("Content-Type", "application/sdp"))
            tx.respond(200, None, headers, self.sdp(direction))
            return
        if method == "INFO":
            tx.respond(200)
            return
        tx.respond(405, None, [("Allow", ALLOW)])

    # ------------------------------------------------------------------ running the service
    async def _run(self, service: Service) -> None:
        try:
            await self.answer()
            if self.state == ENDED:
                return
            await service(self)
        except asyncio.CancelledError:
            pass
        except (ChannelEnded, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("[%s] media service %s failed", self.id, self.name)
            if not self.result:
                self.result = "service error"
        finally:
            if self.state != ENDED and self.handed_to is None:
                self.hangup_now(self.result or "service ended")

    def _check(self) -> None:
        if self.state == ENDED or self.handed_to is not None:
            raise ChannelEnded(f"call {self.id} has ended")

    def _present(self, prompts) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        have = []
        for p in prompts:
            if self.engine.has_prompt(p):
                have.append(p)
            else:
                log.warning("[%s] prompt %r missing: skipped", self.id, p)
        return have

    async def next_event(self, kinds=None, timeout: float | None = None):
        self._check()
        return await self.engine.next_event(self.id, kinds, timeout)

    def play_start(self, prompts, *, loop: bool = True, barge_in: str = "") -> bool:
        self._check()
        have = self._present(prompts)
        if not have:
            return False
        self.engine.play(self.id, "a", have, loop=loop, barge_in=barge_in)
        return True

    def stop_play(self) -> None:
        self._check()
        self.engine.stop_play(self.id, "a")

    async def play(self, prompts, *, barge_in: str = "", loop: bool = False) -> str:
        """Play and wait for its end; the barge-in digit (left for collect_digits) or ""."""
        if not self.play_start(prompts, loop=loop, barge_in=barge_in):
            return ""
        while True:
            ev = await self.next_event("play_done")
            if ev is None:
                continue
            if ev.data.get("reason") == "barge_in":
                q = self.engine._backlog.get(self.id) or ()
                digit = next((e.data["digit"] for e in q if e.kind == "digit"), "")
                return digit or "?"
            return ""

    async def collect_digits(self, max: int = 1, timeout: float = 5.0, terminator: str = "#",
                             first_timeout: float | None = None) -> str:
        got = ""
        while len(got) < max:
            wait = (first_timeout if first_timeout is not None else timeout) if not got else timeout
            ev = await self.next_event("digit", wait)
            if ev is None:
                break
            d = ev.data["digit"]
            if terminator and d in terminator:
                break
            got += d
        return got

    def clear_digits(self) -> None:
        q = self.engine._backlog.get(self.id)
        if q:
            for ev in [e for e in q if e.kind == "digit"]:
                q.remove(ev)

    async def record(self, path: str, *, max_ms: int = 60000, silence_ms: int = 0,
                     stop_digits: str = "#", beep: bool = False) -> dict:
        self._check()
        self.engine.record(self.id, "a", path, max_ms=max_ms, silence_ms=silence_ms,
                           stop_digits=stop_digits, beep=beep)
        ev = await self.next_event("record_done")
        return dict(ev.data)

    def stop_record(self) -> None:
        self._check()
        self.engine.stop_record(self.id, "a")

    async def tone(self, name: str, *, loop: bool = False) -> None:
        self._check()
        self.engine.tone(self.id, "a", name, loop=loop)
        if not loop:
            await self.next_event("tone_done")

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        self._check()
        self.engine.send_dtmf(self.id, "a", digits, duration_ms=duration_ms)

    def join_room(self, room: int) -> None:
        self._check()
        self.engine.room_join(room, self.id, "a")

    def leave_room(self) -> None:
        self._check()
        self.engine.room_leave(self.id, "a")

    def mute(self, muted: bool) -> None:
        self._check()
        self.engine.room_mute(self.id, "a", muted)

    async def sleep(self, seconds: float) -> None:
        self._check()
        await asyncio.sleep(seconds)
        self._check()

    async def ring(self, rows, plan=None):
        """Early channel: hand the caller to the B2BUA ringing ``rows`` (relayed audio)."""
        self._check()
        if self.mode != "early" or self.state != RINGING:
            raise ChannelEnded("only an early (183) channel can be handed back to ringing")
        import dataclasses

        from hpbx.pbx.call import Call
        svc = self.service
        plan = plan or dataclasses.replace(self.plan, rows=tuple(rows))
        self.engine.bridge(self.id, "a")
        self.clear_digits()
        call = Call(svc, self.a_tx, plan, self.caller, self.caller_user, self.from_trunk)
        call.media = self.media
        call.early_codec = dict(self.codec)  # the caller hears our early media (ring-back)
        call.start_iso, call.start_time = self.start_iso, self.start_time
        self.handed_to = call
        self.state = ENDED
        svc.calls[call.id] = call
        call.guarded(call.start)
        return call

    def hangup_now(self, why: str) -> None:
        if self.state == ENDED:
            return
        if self.state == ANSWERED:
            d = self.a_dialog
            headers = d.headers("BYE")
            self.service.transactions.send_request("BYE", d.remote_target, headers, d.target, None)
        elif self.handed_to is None:
            self.a_tx.respond(self.final_status)
        self._end(why)

    def _end(self, why: str) -> None:
        if self.state == ENDED and self.handed_to is not None:
            return
        if self.end_iso:
            return
        svc = self.service
        was_answered = self.state == ANSWERED
        self.state = ENDED
        self.end_iso = _iso()
        self.end_reason = why
        for t in (self._ok, self._se_timer):
            if t is not None:
                t.cancel()
        self._ok = self._se_timer = None
        if was_answered and self.caller_user is not None:
            svc.count_active(self.caller_user.username, -1)
        svc.legs.pop(self.id, None)
        if self.media is not None:
            svc.media.delete(self.id)
        if self._acked is not None and not self._acked.done():
            self._acked.cancel()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        svc.call_ended(self)
        log.info("[%s] media channel %s ended: %s", self.id, self.name, why)

    # ------------------------------------------------------------------ views
    def answered_by(self) -> str:
        return f"service:{self.name}" if self.answer_iso else ""

    def as_dict(self) -> dict:
        d = {"call_id": self.id, "tenant": self.tenant, "caller": self.caller,
             "called": self.plan.dialled, "state": self.state, "slot": self.plan.slot,
             "trunk": self.from_trunk.name if self.from_trunk is not None else "",
             "targets_tried": list(self.targets_tried), "answered_by": self.answered_by(),
             "started_at": self.start_time,
             "start": self.start_iso, "answer": self.answer_iso, "ringing": [],
             "service": self.name, "held": self.held}
        try:
            d["media"] = self.engine.stats(self.id)
        except HpbxError:
            d["media"] = None
        return d

    def cdr(self) -> dict:
        plan = self.plan
        return {"tenant": self.tenant, "call_id": self.id, "caller": self.caller,
                "called": plan.dialled, "slot": plan.slot, "switch": plan.switch,
                "targets_tried": list(self.targets_tried), "answered_by": self.answered_by(),
                "service": self.name,
                "service_result": self.result, "start": self.start_iso, "answer": self.answer_iso,
                "end": self.end_iso, "end_reason": self.end_reason}


# CallService.hangup / media_timeout / close call ``hangup(why)`` synchronously on every call
# of its table; a channel's coroutine API is ``await ch.hangup()``. Both work: a coroutine
# function called without await would do nothing, so the table sees this wrapper.
def _hangup(self, reason: str = "service ended"):
    self.hangup_now(self.result or reason)
    return _Done()


class _Done:
    """Awaitable returned by ``MediaChannel.hangup``: already done."""

    def __await__(self):
        return iter(())


MediaChannel.hangup = _hangup


# ---------------------------------------------------------------------- outbound channels
OUTBOUND_RING_SECS = 30.0


class OutboundChannel(MediaChannel):
    """A media channel on a call hpbx placed (``dial``): UAC side, then the same service API."""

    def __init__(self, svc, plan, callee: str, caller_user, *, name: str, call_id: str, tag: str,
                 target: Target):
        self.service = svc
        self.engine = svc.media
        self.id = call_id
        self.a_tx = None
        self.a_msg = None
        self.a_target = target
        self.a_dialog = None
        self.plan = plan
        self.tenant = plan.tenant
        self.dialled = plan.dialled
        self.caller = callee  # who is on the line: call.list and the CDR show the called party
        self.caller_user = caller_user
        self.from_trunk = None
        self.name = name
        self.mode = "answered"
        self.state = RINGING
        self.legs = {}
        self.winner = None
        self.media = None
        self.task = None
        self.codec = {}
        self.held = False
        self.result = ""
        self.final_status = 480
        self.star_code = self.star_arg = ""
        self.start_iso = _iso()
        self.start_time = time.time()
        self.answer_iso = self.end_iso = self.end_reason = ""
        self.handed_to = None
        self.targets_tried = [callee]
        self._ok = self._se_timer = None
        self.session_expires = 0
        self._sdp_version = 1
        self._late_offer = False
        self._acked = None
        self.to_tag = tag
        self.invite_tx = None
        self.ring_timer = None
        self.on_failed = None
        self.service_fn = None
        host, port = svc.transports.local_address(target.kind, target.host)
        transport = "" if target.kind == "udp" else f";transport={target.kind}"
        self.a_contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"

    def offer_sdp(self) -> bytes:
        address = self.media.address_for(self.a_target.host)
        ip = "IP6" if ":" in address else "IP4"
        return (f"v=0\r\no=hpbx {abs(hash(self.id)) % 10**9} 1 IN {ip} {address}\r\ns=hpbx\r\n"
                f"c=IN {ip} {address}\r\nt=0 0\r\nm=audio {self.media.port_a} RTP/AVP 8 0 101\r\n"
                "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
                "a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n").encode()

    def on_response(self, tx, status: int, msg) -> None:
        self.guarded(self._on_response, status, msg)

    def _on_response(self, status: int, msg) -> None:
        svc = self.service
        if status < 200:
            if msg is not None and msg.to_tag and self.state == RINGING:
                self.a_dialog.update_from_response(msg)
            return
        if status >= 300:
            if self.state == RINGING:
                self._failed(status, f"{status} {msg.reason if msg is not None and msg.reason else ''}".strip())
            return
        if self.state != RINGING:  # a re-sent 2xx (our ACK lost), or answered after we gave up
            self.a_dialog.update_from_response(msg)
            self.a_dialog.send_ack(svc.transports, 1)
            if self.state == ENDED and self.answer_iso == "":
                d = self.a_dialog
                svc.transactions.send_request("BYE", d.remote_target, d.headers("BYE"), d.target, None)
            return
        self.a_dialog.update_from_response(msg)
        self.a_dialog.send_ack(svc.transports, 1)
        if self.ring_timer is not None:
            self.ring_timer.cancel()
            self.ring_timer = None
        try:
            peer = anchor.peer(msg.body)
            self.codec = negotiated(self.offer_sdp(), msg.body)
            self.engine.offer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port, rtcp_mux=peer.rtcp_mux)
            self._terminate()
        except HpbxError as exc:
            log.info("[%s] answer not usable: %s", self.id, exc)
            self.state = ANSWERED  # BYE the answered call
            self.hangup_now(f"bad SDP in the answer: {exc}")
            return
        self.state = ANSWERED
        self.answer_iso = _iso()
        self.winner = self
        svc.legs[self.id] = (self, "a")
        if self.caller_user is not None:
            svc.count_active(self.caller_user.username, 1)
        svc.dialog_changed(self)
        log.info("[%s] %s answered (%s)", self.id, self.caller, self.codec.get("codec"))
        self.task = svc.loop.create_task(self._run(self.service_fn))

    def _ring_timeout(self) -> None:
        self.ring_timer = None
        if self.state == RINGING:
            cancel_with_reason(self.invite_tx, "")
            self._failed(408, "no answer")

    def _failed(self, status: int, why: str) -> None:
        self.final_status = status
        self._end(why)
        if self.on_failed is not None:
            try:
                self.on_failed(self, status)
            except Exception:
                log.exception("[%s] on_failed of %s failed", self.id, self.name)

    def on_ack(self, msg) -> None:
        return  # ACKs of re-INVITEs the far side sent: nothing waits for them

    def hangup_now(self, why: str) -> None:
        if self.state == RINGING:
            if self.ring_timer is not None:
                self.ring_timer.cancel()
                self.ring_timer = None
            cancel_with_reason(self.invite_tx, "")
            self._failed(487, why)
            return
        super().hangup_now(why)


def dial(svc, target: str, tenant: str, caller: str, service: Service, *, name: str = "outbound",
         ring_secs: float = OUTBOUND_RING_SECS, on_failed: Callable | None = None) -> OutboundChannel:
    """Call ``target`` for ``tenant`` presenting ``caller``; ``service`` runs once it answers
    (see "Outbound" in the module doc)."""
    from hpbx._fast import sipmsg
    from hpbx.errors import ValidationError
    from hpbx.pbx import router
    directory = svc.provisioning.directory
    if not isinstance(target, str) or not target:
        raise ValidationError("target", "must be user:<username>, an internal or an external number")
    user = None
    if target.startswith("user:"):
        user = directory.user(target[5:])
        if user is None or user.tenant != tenant:
            raise ValidationError("target", f"no user {target[5:]!r} in tenant {tenant!r}")
    elif re.fullmatch(r"[0-9]{2,6}", target) and not target.startswith("0"):
        found = directory.internal(tenant, target)
        if found is None or not hasattr(found, "username"):
            raise ValidationError("target", f"{target} is not an internal number of a user of {tenant!r}")
        user = found
    elif not re.fullmatch(r"(0|\+)[0-9]{3,20}", target):
        raise ValidationError("target", f"{target!r} is not a number (user:<name>, internal, 0... or +...)")
    call_id = sipmsg.new_call_id()
    tag = sipmsg.new_tag()
    route = None
    if user is not None:
        bindings = [b for b in svc.registrar.lookup(user.username) if b.online]
        if not bindings:
            raise ValidationError("target", f"user {user.username!r} has no registered device")
        b = bindings[-1]
        dest, ruri, route = svc.registrar.target(b), b.contact, svc.registrar.relay_route(b)
        to_user, callee = user.username, user.internal_number or user.username
        domain = None
    else:
        trunk = directory.trunk(tenant)
        if trunk is None:
            raise ValidationError("target", f"tenant {tenant!r} has no trunk for external numbers")
        if svc.toll is not None:
            refusal = svc.toll.admit(call_id, tenant, None, target, None)
            if refusal is not None:
                raise ValidationError("target", f"{target}: {refusal.reason}")
        dest = Target(trunk.transport, trunk.host, trunk.port)
        ruri = f"sip:{target}@{_uri_host(trunk.host)}:{trunk.port}"
        to_user, callee = target, target
        domain = _uri_host(trunk.from_domain or trunk.host)
    plan = router.Plan(kind="outbound", tenant=tenant, dialled=target)
    ch = OutboundChannel(svc, plan, callee, None, name=name, call_id=call_id, tag=tag, target=dest)
    ch.service_fn = service
    ch.on_failed = on_failed
    try:
        ch.media = svc.media.allocate(call_id)
    except HpbxError:
        if svc.toll is not None:
            svc.toll.release(call_id)
        raise
    host, _port = svc.transports.local_address(dest.kind, dest.host)
    domain = domain or _uri_host(host)
    from_uri = f"<sip:{caller or 'hpbx'}@{domain}>"
    to_uri = f"<sip:{to_user}@{domain}>"
    ch.a_dialog = Dialog.uac(call_id, tag, from_uri, to_uri, ruri, 1, dest, ch.a_contact)
    ch.a_dialog.pinned_route = route
    headers = [("Max-Forwards", "70"), ("From", f"{from_uri};tag={tag}"), ("To", to_uri),
               ("Call-ID", call_id), ("CSeq", "1 INVITE"), ("Contact", ch.a_contact), ("Allow", ALLOW),
               ("User-Agent", svc.user_agent)]
    if user is None and caller:
        headers.append(("P-Asserted-Identity", f"<sip:{caller}@{domain}>"))
    if route is not None:
        headers.append(("Route", route))
    headers.append(("Content-Type", "application/sdp"))
    svc.calls[call_id] = ch
    svc.stats["calls_started"] += 1
    ch.invite_tx = svc.transactions.send_request("INVITE", ruri, headers, dest, ch.on_response, ch.offer_sdp())
    ch.ring_timer = svc.wheel.call_later(ring_secs, ch.guarded, ch._ring_timeout)
    log.info("[%s] %s: calling %s for %s", call_id, name, target, tenant)
    return ch
