"""Reusable helpers for tests that drive the real server: free ports, a tmp config, the server
as a subprocess (ready when it answers OPTIONS, stopped with SIGTERM and asserted to exit 0),
and SIPp runs with a scenario and an -inf CSV whose statistics and messages are captured.

    from tests.harness import HpbxServer, free_port, run_sipp, write_users_toml

    with HpbxServer(tmp_path, users=[("alice", "pw")]) as srv:
        result = run_sipp(SCEN / "register.xml", srv.sip_target, tmp_path, inf=[("alice", "pw")])
        assert result.successful == 1, result.describe()
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIPP = shutil.which("sipp") or "/usr/bin/sipp"


# Ports a test holds on to for minutes (a trunk's address written into a tenant) come from below
# the kernel's ephemeral range (32768-60999 by default), where no socket bound to port 0 and no
# outgoing connection can take them meanwhile; each process starts at its own offset.
_RESERVED = list(range(30000, 31200))
random.Random(os.getpid()).shuffle(_RESERVED)


class _PortCycle:
    """Ports (or blocks of ``width`` consecutive ports) below the ephemeral range for SIPp runs,
    handed out in turn and used again only after every other one was: SIPp exits 254 when a
    bind fails with EADDRINUSE, and an ephemeral port probed free and handed to a SIPp starting
    later (a phone's SIP port between its REGISTER run and its UAS run, a media port between
    the probe and SIPp's bind) can meanwhile be taken by any socket bound to port 0."""

    def __init__(self, first: int, last: int, width: int = 1):
        self.starts = list(range(first, last - width + 2, width))
        random.Random(os.getpid() + width).shuffle(self.starts)
        self.width = width
        self.next = 0

    def take(self, host: str = "127.0.0.1") -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(len(self.starts)):
            start = self.starts[self.next]
            self.next = (self.next + 1) % len(self.starts)
            held = []
            try:
                for port in range(start, start + self.width):
                    s = socket.socket(family, socket.SOCK_DGRAM)
                    held.append(s)
                    s.bind((host, port))
                return start
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return start  # an address of another namespace: nothing to check from here
                continue
            finally:
                for s in held:
                    s.close()
        raise RuntimeError("no free port left in the SIPp pool")


def wait_bound(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    """Until a UDP socket is bound to ``port`` (a SIPp just started has taken it); False after
    ``timeout``, or at once for an address of another namespace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        finally:
            probe.close()
        time.sleep(0.02)
    return False


_SIPP_PORTS = _PortCycle(31200, 31799)
_MEDIA_PORTS = _PortCycle(31800, 32299, width=4)  # SIPp -mp N binds N..N+3 (audio, video)
_CLIENT_MEDIA = _PortCycle(32300, 32699, width=8)  # a real phone's RTP/RTCP ports (tests/interop)


def sipp_port(host: str = "127.0.0.1") -> int:
    """A UDP port for a SIPp instance's SIP socket (below the ephemeral range, cycling)."""
    return _SIPP_PORTS.take(host)


def client_media_ports(host: str = "127.0.0.1") -> int:
    """The first of 8 free ports (below the ephemeral range) for a real phone's media."""
    return _CLIENT_MEDIA.take(host)


def sipp_media_port(host: str = "127.0.0.1") -> int:
    """An even port N for SIPp's ``-mp`` with N..N+3 free (below the ephemeral range)."""
    return _MEDIA_PORTS.take(host)


def reserved_pair(host: str = "127.0.0.1") -> int:
    """A port P below the ephemeral range with P and P + 1 free (UDP and TCP) and neither handed
    out here before or after: for baresip, whose ``sip_listen P`` binds UDP and TCP on P and TLS
    on P + 1 (two phones given neighbouring reserved ports collided: EADDRINUSE, exit 98)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    free = set(_RESERVED)
    for port in list(reversed(_RESERVED)):
        if port + 1 not in free:
            continue
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as s:
                        s.bind((host, p))
        except OSError:
            continue
        _RESERVED.remove(port)
        _RESERVED.remove(port + 1)
        return port
    raise RuntimeError("no reserved port pair left")


def reserved_port(host: str = "127.0.0.1") -> int:
    """A UDP port below the ephemeral range, free now, and not handed out twice here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while _RESERVED:
        port = _RESERVED.pop()
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            udp.close()
    raise RuntimeError("no reserved port left")


def free_port(both: bool = True, host: str = "127.0.0.1") -> int:
    """A port free for UDP and (``both``) TCP on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        port = udp.getsockname()[1]
        try:
            if both:
                tcp = socket.socket(family, socket.SOCK_STREAM)
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                finally:
                    tcp.close()
            return port
        finally:
            udp.close()
    raise RuntimeError("no free port found")


def write_users_toml(path: Path, users, tenant: str = "test", flags: dict | None = None) -> Path:
    """A provisioning file with one tenant and ``users`` = [(username, password), ...]."""
    lines = [f'[tenant]\nname = "{tenant}"\n']
    flags = flags or {}
    for username, password in users:
        lines.append(f'[[users]]\nusername = "{username}"\nsip_password = "{password}"\n')
        if username in flags:
            lines.append("[users.flags]\n" + "".join(f"{k} = {str(v).lower()}\n"
                                                  for k, v in flags[username].items()))
    path.write_text("\n".join(lines))
    return path


# Tests of other features must not be banned for their load from loopback: the ban engine runs
# (every datagram is looked up) but bans nothing. tests/security/ passes its own settings.
SECURITY_FOR_TESTS = {"flood_threshold": 1_000_000, "auth_failures": 0, "user_failures": 0}


def write_config(directory: Path, port: int, *, transports=("udp", "tcp"), host: str = "127.0.0.1",
                 provision=(), sip_extra: dict | None = None, log_level: str = "info",
                 security: dict | None = None, extra_toml: str = "") -> Path:
    hostpart = f"[{host}]" if ":" in host else host
    sip = {
        "listen": [f"{t}:{hostpart}:{port}" for t in transports],
        "t1_ms": 100, "t2_ms": 400, "t4_ms": 500,
        "min_expires": 10, "max_expires": 3600, "keepalive_interval": 0,
    }
    sip.update(sip_extra or {})

    def toml_value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = ["[sip]"] + [f"{k} = {toml_value(v)}" for k, v in sip.items()]
    def table(name: str, values: dict) -> list[str]:
        lines = ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()
                                     if not isinstance(v, dict)]
        for k, v in values.items():
            if isinstance(v, dict):
                lines += table(f"{name}.{k}", v)
        return lines

    text += table("security", SECURITY_FOR_TESTS if security is None else security)
    text += ["", "[store]", f"path = {toml_value(str(directory / 'hpbx.sqlite3'))}",
             "", "[admin]", f"socket = {toml_value(str(directory / 'hpbx.sock'))}",
             "", "[log]", f'level = "{log_level}"',
             "", "[provision]", f"files = {toml_value([str(p) for p in provision])}", "", extra_toml]
    path = directory / "hpbx.toml"
    path.write_text("\n".join(text))
    return path


def sip_options(host: str, port: int, timeout: float = 0.5, *, transport: str = "udp") -> str | None:
    """Send one OPTIONS and return the status line of the answer (None on timeout)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.settimeout(timeout)
    try:
        if transport != "udp":
            sock.connect((host, port))
        else:
            sock.bind((host, 0))
        lport = sock.getsockname()[1]
        hostpart = f"[{host}]" if ":" in host else host
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        msg = (f"OPTIONS sip:{hostpart}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/{transport.upper()} {hostpart}:{lport};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:probe@{hostpart}>;tag={branch[-8:]}\r\n"
               f"To: <sip:{hostpart}:{port}>\r\nCall-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
        if transport == "udp":
            sock.sendto(msg, (host, port))
        else:
            sock.sendall(msg)
        data = sock.recv(65535)
        return data.split(b"\r\n", 1)[0].decode()
    except (OSError, socket.timeout):
        return None
    finally:
        sock.close()


class HpbxServer:
    """The real server as a subprocess on a tmp config with free ports."""

    def __init__(self, directory: Path, *, users=(), flags=None, transports=("udp", "tcp"),
                 host: str = "127.0.0.1", sip_extra=None, port: int | None = None,
                 log_level: str = "info", env=None, wrap: list[str] | None = None,
                 security: dict | None = None, provision_files=(), extra_toml: str = ""):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or (5060 if wrap else free_port(host=host))
        provision = tuple(provision_files)
        if users:
            provision += (write_users_toml(self.dir / "users.toml", users, flags=flags),)
        self.config = write_config(self.dir, self.port, transports=transports, host=host,
                                   provision=provision, sip_extra=sip_extra, log_level=log_level,
                                   security=security, extra_toml=extra_toml)
        self.transports = transports
        self.env = env
        self.wrap = wrap or []
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "hpbx.log"
        self._log = None

    @property
    def sip_target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.dir / "hpbx.sqlite3"

    def start(self, timeout: float = 30.0) -> "HpbxServer":
        self._log = open(self.log_path, "ab")
        # a native crash leaves its Python stack in the log (the two unexplained segfaults of
        # the first session left only exit code -11)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **(self.env or {}))
        self.proc = subprocess.Popen(
            self.wrap + [sys.executable, "-m", "hpbx", "serve", "--config", str(self.config)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hpbx exited with {self.proc.returncode} at start:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"hpbx did not answer OPTIONS within {timeout}s:\n{self.log()}")

    def ready(self) -> bool:
        """Does the server answer OPTIONS (asked from inside ``wrap``, e.g. a netns, if given)
        and accept connections on its admin socket? SIP listens before the admin socket is up
        (hpbx logs "hpbx ready" after both), so OPTIONS alone let tests reach a half-started
        server's admin socket (the two-node test's FileNotFoundError)."""
        if not self._admin_up():
            return False
        if not self.wrap:
            return sip_options(self.host, self.port, 0.3, transport=self.transports[0]) is not None
        probe = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import harness; "
                 f"sys.exit(0 if harness.sip_options({self.host!r}, {self.port}, 0.3, "
                 f"transport={self.transports[0]!r}) else 1)")
        return subprocess.run(self.wrap + [sys.executable, "-c", probe], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def _admin_up(self) -> bool:
        """The configured admin socket accepts a connection (a stale file of a killed run does
        not); True when the config has no admin socket."""
        import tomllib
        try:
            path = tomllib.loads(Path(self.config).read_text()).get("admin", {}).get("socket", "")
        except (OSError, tomllib.TOMLDecodeError):
            return True
        if not path:
            return True
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.3)
            probe.connect(path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; asserts a clean exit (status 0)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"hpbx did not stop on SIGTERM within {timeout}s:\n{self.log()}")
        code = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
        assert code == 0, f"hpbx exited with {code}:\n{self.log()}"
        return code

    def kill(self) -> None:
        """SIGKILL (crash simulation); no exit status check."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()

    def __enter__(self) -> "HpbxServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.kill()

    def bindings(self) -> list[dict]:
        """The registrations table, read from the SQLite file (works while the server runs)."""
        import sqlite3
        db = sqlite3.connect(self.db_path)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM registrations")]
        finally:
            db.close()


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    retransmissions: int
    messages: str
    errors: str
    stdout: str
    cmd: list

    def describe(self) -> str:
        return (f"sipp rc={self.returncode} ok={self.successful} failed={self.failed}\n"
                f"cmd: {' '.join(map(str, self.cmd))}\nerrors:\n{self.errors[-3000:]}\n"
                f"messages:\n{self.messages[-4000:]}\nstdout:\n{self.stdout[-1500:]}")

    def received(self, first_line_prefix: str) -> list[str]:
        """Every message SIPp received whose first line starts with the prefix."""
        return [m for d, m in self.message_blocks() if d == "received" and m.startswith(first_line_prefix)]

    def sent(self, first_line_prefix: str) -> list[str]:
        return [m for d, m in self.message_blocks() if d == "sent" and m.startswith(first_line_prefix)]

    def message_blocks(self) -> list[tuple[str, str]]:
        """(direction, message text) in trace order."""
        out = []
        for block in re.split(r"(?m)^-{5,}.*\n", self.messages):
            intro, sep, text = block.partition("\n\n")
            if not sep:
                continue
            direction = "received" if "received" in intro else "sent"
            out.append((direction, text.strip("\n")))
        return out


def have_sipp() -> bool:
    return os.path.exists(SIPP)


def run_sipp(scenario: Path, target: str, workdir: Path, **kw) -> SippResult:
    """Run SIPp to completion (bounded by -m, -timeout and a hard kill) and collect its output.
    Keywords as for ``SippRun``."""
    return SippRun(scenario, target, workdir, **kw).start().wait()


class SippRun:
    """One SIPp process; ``start()`` then ``wait()`` (or ``kill()``) -> ``SippResult``.

    ``inf``: list of CSV rows (tuples) written as the -inf file (SEQUENTIAL).
    """

    def __init__(self, scenario: Path, target: str, workdir: Path, *, inf=None,
                 transport: str = "u1", calls: int = 1, rate: float = 10, timeout: float = 30,
                 local_port: int | None = None, local_ip: str = "127.0.0.1",
                 extra: list | None = None, name: str = "sipp", wrap: list[str] | None = None,
                 trace_msg: bool = True):
        if not have_sipp():
            pytest.skip("sipp is not installed (Debian package sip-tester)")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{name}-{uuid.uuid4().hex[:6]}"
        self.timeout = timeout
        self.stat = workdir / f"{tag}.stat.csv"
        self.msgs = workdir / f"{tag}.msg.log"
        self.errs = workdir / f"{tag}.err.log"
        self.out = workdir / f"{tag}.out"
        self.workdir = workdir
        cmd = list(wrap or []) + [SIPP] + ([target] if target else []) + [
                                  "-sf", str(scenario), "-m", str(calls),
                                  "-r", str(rate), "-t", transport, "-i", local_ip,
                                  "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
                                  "-trace_stat", "-stf", str(self.stat), "-fd", "1",
                                  "-trace_err", "-error_file", str(self.errs),
                                  "-max_socket", "2000", "-buff_size", "4194304"]
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", str(self.msgs)]
        # never the default 5060: parallel runs and other tests must not collide
        cmd += ["-p", str(local_port or sipp_port(local_ip))]
        if inf is not None:
            csv = workdir / f"{tag}.csv"
            csv.write_text("SEQUENTIAL\n" + "".join(";".join(map(str, row)) + ";\n" for row in inf))
            cmd += ["-inf", str(csv)]
        self.cmd = cmd + list(extra or [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SippRun":
        self._out = open(self.out, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        return self

    def wait(self) -> SippResult:
        left = self.timeout + 15 - (time.monotonic() - self.started)
        try:
            code = self.proc.wait(max(left, 1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        return self._result(code)

    def kill(self) -> SippResult:
        if self.proc.poll() is None:
            self.proc.kill()
        return self._result(self.proc.wait())

    def _result(self, code: int) -> SippResult:
        self._out.close()
        out = self.out.read_text(errors="replace")
        ok, failed, retrans = _sipp_counts(self.stat)
        return SippResult(code, ok, failed, retrans,
                          self.msgs.read_text(errors="replace") if self.msgs.exists() else "",
                          self.errs.read_text(errors="replace") if self.errs.exists() else "",
                          out, self.cmd)


def _sipp_counts(stat: Path) -> tuple[int, int, int]:
    """SuccessfulCall(C), FailedCall(C), Retransmissions(C) from the last -trace_stat row."""
    if not stat.exists():
        return 0, 0, 0
    rows = [r for r in stat.read_text(errors="replace").splitlines() if r.strip()]
    if len(rows) < 2:
        return 0, 0, 0
    header = rows[0].split(";")
    last = rows[-1].split(";")
    col = {name: i for i, name in enumerate(header)}

    def get(name):
        i = col.get(name)
        try:
            return int(last[i]) if i is not None else 0
        except (ValueError, IndexError):
            return 0

    return get("SuccessfulCall(C)"), get("FailedCall(C)"), get("Retransmissions(C)")


class RawPhone:
    """A minimal SIP phone over a plain UDP socket, for tests that need exact control
    (timing of retransmissions, replayed nonce-counts, chosen digest algorithm)."""

    def __init__(self, server_host: str, server_port: int, host: str = "127.0.0.1", port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = (server_host, server_port)
        self.cseq = 0
        self.call_id = uuid.uuid4().hex + "@rawphone"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendto(data.encode() if isinstance(data, str) else data, self.server)

    def recv(self, timeout: float = 2.0) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except (socket.timeout, TimeoutError):
            return None
        return data.decode(errors="replace")

    def recv_until(self, predicate, timeout: float = 2.0) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = self.recv(left)
            if msg is None:
                return None
            if predicate(msg):
                return msg

    def request(self, method: str, ruri: str, headers: list[str] = (), *, branch: str | None = None,
                cseq: int | None = None, call_id: str | None = None, from_user: str = "rawphone",
                to_uri: str | None = None, body: str = "") -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + uuid.uuid4().hex[:16]
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {host}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{from_user}@{host}>;tag=t{abs(hash(self.call_id)) % 99999}",
                 f"To: <{to_uri or ruri}>",
                 f"Call-ID: {call_id or self.call_id}",
                 f"CSeq: {cseq} {method}", *headers, f"Content-Length: {len(body.encode())}", "", body]
        text = "\r\n".join(lines)
        self.send(text)
        return text


def header(message: str, name: str) -> list[str]:
    """Every value of a header in a message text (no compact forms)."""
    return re.findall(rf"(?im)^{re.escape(name)}\s*:\s*(.*?)\s*$", message.split("\r\n\r\n")[0])


def digest_authorization(challenge: str, username: str, password: str, method: str, uri: str,
                         nc: int = 1, cnonce: str = "0a4f113b", algorithm: str | None = None) -> str:
    """An Authorization header value answering one WWW-Authenticate value (qop=auth)."""
    import hashlib
    params = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    alg = algorithm or params.get("algorithm", "MD5")
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[alg]
    ha1 = h(f"{username}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    ncs = f"{nc:08x}"
    resp = h(f"{ha1}:{params['nonce']}:{ncs}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{username}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{resp}", algorithm={alg}, qop=auth, nc={ncs}, cnonce="{cnonce}"')
