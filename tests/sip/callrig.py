"""A rig for call tests: the real server with a tenant (trunks, users, numbers) and an RTP
range, SIPp phones registered as devices of users and then waiting as UAS in the background,
SIPp callers, and readers for the CDR table and the admin socket.

    rig = CallRig(tmp_path, TENANT.format(carrier=..., gateway=...))
    rig.start()
    anna = rig.phone("anna", "call_uas.xml", pause_ms=500)   # registers, then waits for a call
    res = rig.call("call_uac.xml", "0441110000", port=rig.carrier_port)
    assert anna.finish().received("INVITE")
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import orjson

from harness import (SIPP, HpbxServer, SippResult, _sipp_counts, run_sipp, sipp_media_port,
                     sipp_port, wait_bound, write_config)

SCEN = Path(__file__).parent / "scenarios"
ALLDAYS = '["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'


# ---- tenant TOML: the call tests and the call bench describe their tenants with these
def trunk(name: str, port: int, host: str = "127.0.0.1", **fields: str) -> str:
    """A ``[[trunks]]`` table; ``fields`` are further string keys (username, password)."""
    return (f'\n[[trunks]]\nname = "{name}"\nhost = "{host}"\nport = {port}\n'
            + "".join(f'{k} = "{v}"\n' for k, v in fields.items()))


def user(name: str, internal: str = "", displayed: str = "", flags=(), password: str = "") -> str:
    """A ``[[users]]`` table, password ``<name>-pw`` unless given; ``flags`` are set to true."""
    password = password or f"{name}-pw"
    return (f'\n[[users]]\nusername = "{name}"\nsip_password = "{password}"\n'
            + (f'internal_number = "{internal}"\n' if internal else "")
            + (f'displayed_number = "{displayed}"\n' if displayed else "")
            + ("[users.flags]\n" + "".join(f"{k} = true\n" for k in flags) if flags else ""))


def number(num: str, *rows: tuple[int, list[str]], **fields: str) -> str:
    """A ``[[numbers]]`` table with one slot active every day holding ``rows`` of
    (duration, targets); ``fields`` are further string keys of the number (alert_info)."""
    text = (f'\n[[numbers]]\nnumber = "{num}"\n' + "".join(f'{k} = "{v}"\n' for k, v in fields.items())
            + f"[[numbers.slots]]\nactive = true\ndays = {ALLDAYS}\n")
    for duration, targets in rows:
        quoted = ", ".join(f'"{t}"' for t in targets)
        text += f"[[numbers.slots.rows]]\nduration = {duration}\ntargets = [{quoted}]\n"
    return text


def media_port(host: str = "127.0.0.1") -> int:
    """An even port for a SIPp instance's media, free now together with port + 1..3 (SIPp binds
    audio and video pairs), from below the ephemeral range (harness.sipp_media_port)."""
    return sipp_media_port(host)


class SippProcess:
    """A SIPp instance running in the background (a phone waiting for a call)."""

    def __init__(self, cmd, workdir: Path, stat: Path, msgs: Path, errs: Path, timeout: float):
        self.cmd = cmd
        self.stat, self.msgs, self.errs = stat, msgs, errs
        self.timeout = timeout
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.result: SippResult | None = None

    def finish(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to end (killed after ``timeout``) and collect what it saw."""
        if self.result is not None:
            return self.result
        try:
            out, _ = self.proc.communicate(timeout=self.timeout + 10 if timeout is None else timeout)
            code = self.proc.returncode
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            code = -9
        ok, failed, retrans = _sipp_counts(self.stat)
        self.result = SippResult(code, ok, failed, retrans,
                                 self.msgs.read_text(errors="replace") if self.msgs.exists() else "",
                                 self.errs.read_text(errors="replace") if self.errs.exists() else "",
                                 (out or b"").decode(errors="replace"), self.cmd)
        return self.result

    def kill(self) -> SippResult:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.finish(5)


class CallRig:
    def __init__(self, directory: Path, tenant_toml: str, *, rtp_ports: tuple[int, int] | None = None,
                 media_timeout: int = 60, log_level: str = "info", host: str = "127.0.0.1",
                 wrap: list[str] | None = None, env: dict | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.tenant_path = self.dir / "tenant.toml"
        self.tenant_path.write_text(tenant_toml)
        # below the ephemeral range (see harness.reserved_port), and per process
        base = rtp_ports or (10000 + (os.getpid() % 100) * 200, 10000 + (os.getpid() % 100) * 200 + 99)
        self.rtp_ports = base
        self.server = HpbxServer(self.dir, log_level=log_level, host=host, wrap=wrap, env=env)
        config = write_config(self.dir, self.server.port, host=host, provision=(self.tenant_path,),
                              log_level=log_level)
        with open(config, "a") as f:
            f.write(f'\n[rtp]\nports = "{base[0]}-{base[1]}"\naddress = "{host}"\n'
                    f"media_timeout = {media_timeout}\n")
        self.server.config = config
        self.passwords: dict[str, str] = {}
        self.procs: list[SippProcess] = []

    @property
    def target(self) -> str:
        return self.server.sip_target

    def start(self) -> "CallRig":
        self.server.start()
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        self.server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            for p in self.procs:
                p.kill()
            self.server.kill()

    # ---- phones
    def register(self, user: str, password: str, port: int) -> None:
        res = run_sipp(SCEN / "register_auth.xml", self.target, self.dir / "sipp", local_port=port,
                       inf=[(user, password, user, 300)], name=f"reg-{user}", local_ip=self.host)
        assert res.returncode == 0 and res.successful == 1, res.describe()

    def sipp(self, scenario: str, *, port: int | None = None, service: str = "hpbx", calls: int = 1,
             pause_ms: int = 0, timeout: float = 20, extra=(), name: str = "sipp",
             rate: float = 10) -> SippProcess:
        workdir = self.dir / "sipp"
        workdir.mkdir(exist_ok=True)
        tag = f"{name}-{uuid.uuid4().hex[:6]}"
        stat, msgs, errs = (workdir / f"{tag}.stat.csv", workdir / f"{tag}.msg.log",
                            workdir / f"{tag}.err.log")
        cmd = [SIPP, self.target, "-sf", str(SCEN / scenario), "-m", str(calls), "-r", str(rate),
               "-t", "u1", "-i", self.host, "-p", str(port or sipp_port(self.host)),
               "-mi", self.host, "-mp", str(media_port(self.host)), "-s", service,
               "-d", str(pause_ms), "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
               "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_err", "-error_file", str(errs),
               "-trace_msg", "-message_file", str(msgs), *extra]
        proc = SippProcess(cmd, workdir, stat, msgs, errs, timeout)
        self.procs.append(proc)
        return proc

    def phone(self, user: str, scenario: str, *, password: str | None = None, port: int | None = None,
              pause_ms: int = 0, timeout: float = 20, extra=()) -> SippProcess:
        """Register ``user`` from a fresh port, then start the UAS scenario on that port."""
        port = port or sipp_port(self.host)
        self.register(user, password or self.passwords.get(user) or f"{user}-pw", port)
        proc = self.sipp(scenario, port=port, pause_ms=pause_ms, timeout=timeout, extra=extra,
                         name=f"phone-{user}")
        # a call placed before SIPp has bound its port would be lost until a retransmission
        if not wait_bound(port, self.host):
            if proc.proc.poll() is not None:
                raise AssertionError(f"phone {user}: SIPp exited early\n" + proc.finish().describe())
            time.sleep(0.15)  # an address of another namespace: its bind cannot be seen from here
        return proc

    def call(self, scenario: str, service: str, *, port: int | None = None, pause_ms: int = 0,
             timeout: float = 20, extra=()) -> SippResult:
        return self.sipp(scenario, port=port, service=service, pause_ms=pause_ms, timeout=timeout,
                         extra=extra, name="caller").finish()

    # ---- what the server recorded
    def cdrs(self, wait: float = 2.0, count: int = 1) -> list[dict]:
        """The CDR table (waits up to ``wait`` s for at least ``count`` rows: they are batched)."""
        deadline = time.monotonic() + wait
        while True:
            db = sqlite3.connect(self.server.db_path)
            try:
                rows = [orjson.loads(r[0]) for r in db.execute("SELECT doc FROM cdrs ORDER BY id")]
            finally:
                db.close()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def admin(self, method: str, **params):
        from hpbx.admin.client import AdminClient
        with AdminClient(str(self.dir / "hpbx.sock"), timeout=5) as client:
            return client.call(method, params or None)

    def call_stats(self) -> dict:
        return self.admin("stats.get", layer="calls")

    def assert_idle(self) -> dict:
        """No call left active and no media port pair left in use once calls have ended."""
        idle = self.wait_idle()
        assert idle["calls_active"] == 0 and idle["media_pairs_used"] == 0, idle
        return idle

    def wait_idle(self, timeout: float = 5.0) -> dict:
        """Until no call is active and every media port pair is back in the pool."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.call_stats()
            s = stats.get("calls", stats)
            if (s["calls_active"] == 0 and s["media_pairs_used"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.1)
