"""The REGISTER path inside the server, without sockets: µs of server CPU per registration.

One registration is what SIPp's reg_auth.xml does: REGISTER -> 401 -> REGISTER with digest ->
200 (bindings committed to SQLite before the 200 leaves). The real dispatcher, transaction
layer, authenticator, registrar and SQLite store run on a real event loop; only the UDP socket
is replaced by a channel that keeps what would have been sent. Batches of BATCH registrations
are fed per loop iteration, as a loaded server sees them. The client's own digest computation is
outside the timed part. This isolates the Python/Cython cost that bench_register.py measures
end to end (where syscalls and SIPp share the two cores).

    python bench/bench_register_path.py          # prints us_per_registration=...
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpbx import settings as settings_mod  # noqa: E402
from hpbx.sip.auth import Authenticator  # noqa: E402
from hpbx.sip.dispatcher import Dispatcher  # noqa: E402
from hpbx.sip import registrar as registrar_mod  # noqa: E402
from hpbx.sip.registrar import Registrar  # noqa: E402
from hpbx.sip.timers import TimerWheel  # noqa: E402
from hpbx.sip.transaction import TransactionLayer  # noqa: E402
from hpbx.store.registrations import RegistrationStore  # noqa: E402

NUSERS = 10_000
BATCH = 32
ROUNDS = 40_000

REGISTER = (
    "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{n}-{step};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:{user}@127.0.0.1:5060>;tag=77r{n}\r\n"
    "To: <sip:{user}@127.0.0.1:5060>\r\n"
    "Call-ID: {n}-77@127.0.0.1\r\n"
    "CSeq: {step} REGISTER\r\n"
    "Contact: <sip:{user}@127.0.0.1:5062>\r\n"
    "{auth}"
    "Expires: 3600\r\n"
    "User-Agent: hpbx-bench\r\n"
    "Content-Length: 0\r\n\r\n")


class Channel:
    kind = "udp"
    reliable = False
    id = 0
    index = 0
    local_host = "127.0.0.1"
    local_port = 5060

    def __init__(self):
        self.out: list[bytes] = []

    def send(self, data, addr):
        self.out.append(data)


class Hub:
    def __init__(self, channel):
        self.channel = channel
        self.udp = [channel]

    def channel_for(self, *a):
        return self.channel

    def local_address(self, kind, host):
        return ("127.0.0.1", 5060)


def authorization(response: bytes, user: str) -> str:
    nonce = re.search(rb'nonce="([^"]+)"', response).group(1).decode()
    ha1 = hashlib.md5(f"{user}:hpbx:pw{user}".encode()).hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:127.0.0.1:5060").hexdigest()
    resp = hashlib.md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
    return (f'Authorization: Digest username="{user}",realm="hpbx",uri="sip:127.0.0.1:5060",'
            f'nonce="{nonce}",response="{resp}",algorithm=MD5,cnonce="c0ffee",qop=auth,'
            f'nc=00000001\r\n')


async def measure(rounds: int = ROUNDS) -> float:
    loop = asyncio.get_running_loop()
    tmp = Path(tempfile.mkdtemp(prefix="bench-regpath-"))
    settings = settings_mod.from_dict({"sip": {"listen": ["udp:127.0.0.1:5060"], "min_expires": 60},
                                       "store": {"path": str(tmp / "hpbx.sqlite3")}})
    users = {str(u): SimpleNamespace(username=str(u), sip_password=f"pw{u}", tenant="t",
                                     flags=SimpleNamespace(behind_nat=False))
             for u in range(100_000, 100_000 + NUSERS)}
    store = RegistrationStore(tmp / "hpbx.sqlite3")
    wheel = TimerWheel(loop)
    auth = Authenticator(users.get, "hpbx", 300, ("MD5", "SHA-256"))
    registrar = Registrar(loop, wheel, store, auth, settings)
    # one commit per batch fed here (the server commits at most every COMMIT_INTERVAL, which
    # under load is a batch of about this size)
    registrar_mod.COMMIT_INTERVAL = 0.0
    registrar.start()
    channel = Channel()
    layer = TransactionLayer(wheel, Hub(channel), 0.5, 4.0, 5.0)
    dispatcher = Dispatcher(layer, registrar)
    addr = ("127.0.0.1", 5062)
    names = list(users)
    spent = 0.0
    done = 0
    n = 0
    while done < rounds:
        batch = []
        for _ in range(BATCH):
            n += 1
            batch.append((n, names[n % NUSERS]))
        first = [REGISTER.format(n=i, step=1, user=u, auth="").encode() for i, u in batch]
        channel.out.clear()
        t0 = time.perf_counter()
        for data in first:
            dispatcher.on_message(data, channel, addr)
        spent += time.perf_counter() - t0
        challenges = [c for c in channel.out if c.startswith(b"SIP/2.0 401")]
        assert len(challenges) == BATCH, channel.out[:1]
        second = [REGISTER.format(n=i, step=2, user=u, auth=authorization(c, u)).encode()
                  for (i, u), c in zip(batch, challenges)]
        channel.out.clear()
        t0 = time.perf_counter()
        for data in second:
            dispatcher.on_message(data, channel, addr)
        await asyncio.sleep(0)  # the registrar's commit runs here, then the 200s leave
        spent += time.perf_counter() - t0
        oks = [c for c in channel.out if c.startswith(b"SIP/2.0 200")]
        assert len(oks) == BATCH, channel.out[:1]
        done += BATCH
    registrar.stop()
    wheel.close()
    store.close()
    return spent / done * 1e6


def run() -> float:
    import gc
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as hpbx.app.run sets it
    us = asyncio.run(measure())
    print(f"register_path us_per_registration={us:.1f} (REGISTER+401+REGISTER+200, "
          f"{ROUNDS} registrations, batches of {BATCH})")
    return us


def test_register_path():
    run()


if __name__ == "__main__":
    run()
