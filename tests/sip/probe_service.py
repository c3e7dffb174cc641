"""A media service for the tests, loaded by the server through HPBX_SERVICE_MODULES: it beeps,
waits for one digit, records what the caller says for a second and ends the call, writing
what it saw into the CDR's service_result."""
from __future__ import annotations

import os

from hpbx.pbx import media_channel


async def probe(ch):
    ch.result = "answered"
    await ch.tone("beep")
    digit = await ch.collect_digits(max=1, timeout=8)
    ch.result = f"digit={digit}"
    rec = await ch.record(os.path.join(os.environ["PROBE_DIR"], "probe.wav"), max_ms=1000,
                          stop_digits="")
    ch.result += f" record={rec['reason']}:{rec['ms']}"


async def star(ch):
    ch.result = f"code={ch.star_code} arg={ch.star_arg} user={ch.caller_user.username}"
    await ch.tone("beep")


def register(call_service) -> None:
    media_channel.register_service("conference", probe, name="probe")
    media_channel.register_star_code("*777", star, name="probe-star")
