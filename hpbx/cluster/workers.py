"""Signalling on every core: ``[server] workers = N`` runs N hpbx processes on one node.

Each worker binds the same SIP UDP listeners with SO_REUSEPORT; the kernel picks the worker
by a hash of the source address and port (``[server] spread = "source"``, the default), or at
random per datagram (``"random"``: a classic BPF program, ``spread_evenly``), so that a trunk
sending everything from one address and port is not received by one worker alone. Measured
(REGISTER at 12,000/s, 2 workers, shared box): "source" 92 of 96,000 failed, 63 us CPU per
registration; "random" 7,553 failed (both workers forwarding to each other at once filled the
socket pairs), so "source" stays the default: receiving and forwarding is ~3 us of the ~30 us
a message costs, and which worker receives matters little. Every SIP message belongs to one worker, the
owner of its Call-ID (``hpbx._fast.shard``: FNV-1a of the Call-ID value modulo N): a worker
that receives a datagram of another worker's Call-ID forwards it, with its source address, over
a Unix datagram socket pair, and the owner handles it as if it had read it itself. The owner
answers from its own socket on the same address and port, so a phone sees one server. Call-IDs
hpbx makes up itself (B2BUA legs, MWI, keepalive OPTIONS, click-to-dial) are drawn until they
hash to the worker that makes them, so the answers to its requests come back to it. A call,
its dialogs and its relay session therefore live in one worker, a REGISTER in the worker that
owns its Call-ID (phones keep one Call-ID per registration, RFC 3261 10.2.4).

Shared between the workers, over the same socket pairs (a full mesh, created by the first
worker before it starts the others and inherited by them; socket pairs have no datagram queue
limit, only their 4 MiB buffers):

- registrations: each batch a worker stores (the SQLite file is shared) is sent to every other
  worker, which applies it to its in-memory bindings (``Registrar.apply_remote``), so every
  worker can route a call to every phone;
- provisioning: a change committed through any worker's admin socket is re-read by the others
  (``Provisioning.reload_tenant``), so admin changes are live on all workers at once;
- bans: a ban or unban on one worker holds on all.

Worker 0 is the primary: the admin socket, the web face, CTI, TCP/TLS listeners and CDR
retention are its own; it starts the others at once when the store is provisioned (they load
it in parallel), else once it has imported ``[provision] files``, and stops them when it stops (a
worker that dies stops the whole group: a supervisor restarts it). ``call.list`` and
``hangup`` on its admin socket reach the calls of every worker (``rpc``), and the
``workers`` stats section lists what each one holds and forwarded. The others also have an
admin socket each (``<admin.socket>.w<N>``), and a mail spool of their own below the primary's.
Each worker has its own relay on a slice of ``[rtp] ports``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import orjson

from hpbx._fast import shard

log = logging.getLogger("hpbx.workers")

ENV = "HPBX_WORKER"  # "index/count/rpc_fd/peer:fd,peer:fd,..." in the started workers
BUF = 4 << 20
MAX_CHUNK = 48_000  # bytes of bindings per registration message (a datagram holds 4 MiB)

SIP, REG, TENANT, BAN, RPC, REPLY = b"S", b"R", b"T", b"B", b"Q", b"A"


def server_settings(r, sip, rtp):
    """``[server]``, checked against the listeners and the RTP range it has to share."""
    from hpbx.settings import ServerSettings

    workers = r.int_in("workers", 1, 0, 64)
    spread = r.get("spread", str, "source")
    if spread not in ("random", "source"):
        raise r.fail("spread", f'must be "random" or "source", got {spread!r}')
    r.finish()
    if workers == 0:
        workers = os.cpu_count() or 1
    if workers > 1:
        if any(lst.transport == "udp" and lst.port == 0 for lst in sip.listen):
            raise r.fail("workers", "several workers need fixed UDP listener ports (not 0)")
        if (rtp.port_max - rtp.port_min + 1) // 2 < 4 * workers:
            raise r.fail("workers", f"[rtp] ports {rtp.port_min}-{rtp.port_max} is too small to "
                                    f"give {workers} workers two sessions each")
    return ServerSettings(workers=workers, spread=spread)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, BUF)
            except OSError:
                pass
    return a, b


def _encode_binding(b) -> bytes:
    return orjson.dumps((*b.row(), b.node))


def _decode_binding(row: list, now: float):
    from hpbx.store.registrations import Binding

    node = row.pop()
    row[-1] = bool(row[-1])
    return Binding(*row, last_seen=now, node=node)


SO_ATTACH_REUSEPORT_CBPF = 51


def spread_evenly(sock: socket.socket, workers: int) -> bool:
    """Have the kernel hand each datagram to a random worker of the SO_REUSEPORT group (a
    classic BPF program: random % N) instead of hashing the source: a trunk or a load
    generator sends everything from one address and port, and the hash would put all of it on
    one worker, which would then forward half of it. Returns False where the kernel refuses."""
    import ctypes

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Insn))]

    SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM
    insns = (Insn * 3)(Insn(0x20, 0, 0, SKF_AD_RANDOM),  # ld rand
                       Insn(0x94, 0, 0, workers),        # mod #N
                       Insn(0x16, 0, 0, 0))              # ret a
    prog = Prog(3, insns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(prog))
    except OSError as exc:
        log.warning("SO_ATTACH_REUSEPORT_CBPF refused (%s): datagrams spread by source", exc)
        return False
    return True


class SharedRegistrations:
    """The registrar's store in a worker: the shared SQLite table, and every batch sent on."""

    def __init__(self, store, group: "Workers"):
        self.inner = store
        self.group = group

    def load(self, now):
        return self.inner.load(now)

    def write_batch(self, upserts, deletes, refreshes=()):
        pending = self.inner.write_batch(upserts, deletes, refreshes)
        self.group.share_bindings(list(upserts) + list(refreshes), list(deletes))
        return pending

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Workers:
    """This process's place in the group: its index, the socket pairs to the others."""

    def __init__(self, index: int, count: int, peers: dict[int, socket.socket],
                 rpc: dict[int, socket.socket] | socket.socket | None, child_ends=None):
        self.index = index
        self.count = count
        self.peers = peers  # other worker's index -> our end of the pair
        self.rpc = rpc  # primary: index -> its end of the rpc pair; others: their end
        self._child_ends = child_ends or {}  # primary, until the workers are started
        self.procs: dict[int, subprocess.Popen] = {}
        self.server = None
        self.sink = None
        self.loop = None
        self.stats = {"received": 0, "forwarded": 0, "received_forwarded": 0, "dropped": 0, "bindings_shared": 0,
                      "bindings_received": 0, "tenants_reloaded": 0}
        self._rpc_seq = 0
        self._backlog: dict[int, list[bytes]] = {}
        self._stopping = False
        self._watch = None

    @property
    def primary(self) -> bool:
        return self.index == 0

    # ---- set-up
    @classmethod
    def for_process(cls, settings) -> "Workers | None":
        """The started workers find their place in the environment; the first process makes
        the socket pairs when ``[server] workers`` > 1; None for a single process."""
        env = os.environ.pop(ENV, "")
        if env:
            head, _, fds = env.partition(";")
            index, count, rpc_fd = (int(x) for x in head.split("/"))
            peers = {}
            for item in filter(None, fds.split(",")):
                j, fd = (int(x) for x in item.split(":"))
                peers[j] = socket.socket(fileno=fd)
            group = cls(index, count, peers, socket.socket(fileno=rpc_fd))
            try:  # the primary's end is ours too (kill -9 of the primary included)
                import ctypes
                ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                pass
        else:
            count = settings.server.workers
            if count <= 1:
                return None
            ends: dict[int, dict] = {i: {} for i in range(count)}
            for i in range(count):
                for j in range(i + 1, count):
                    a, b = _pair()
                    ends[i][j], ends[j][i] = a, b
            rpc, child_rpc = {}, {}
            for j in range(1, count):
                rpc[j], child_rpc[j] = _pair()
            group = cls(0, count, ends[0], rpc, {j: (ends[j], child_rpc[j]) for j in range(1, count)})
        for s in group.peers.values():
            s.setblocking(False)
        group._own_call_ids()
        return group

    def _own_call_ids(self) -> None:
        """Call-IDs made up in this process hash to it: the answers come back here."""
        from hpbx._fast import sipmsg

        make = getattr(sipmsg.new_call_id, "__wrapped__", sipmsg.new_call_id)
        index, count, owner_of = self.index, self.count, shard.owner_of

        def new_call_id(host: str = "") -> str:
            while True:
                cid = make(host)
                if owner_of(cid, count) == index:
                    return cid

        new_call_id.__wrapped__ = make
        sipmsg.new_call_id = new_call_id

    def settings_for(self, settings):
        """This worker's settings: its slice of the RTP ports; the others do without the
        primary's own services (web, stream listeners) and get their own admin socket and spool."""
        rtp = settings.rtp
        span = (rtp.port_max - rtp.port_min + 1) // self.count // 2 * 2
        lo = rtp.port_min + self.index * span
        hi = rtp.port_max if self.index == self.count - 1 else lo + span - 1
        changes = {"rtp": dataclasses.replace(rtp, port_min=lo, port_max=hi)}
        if not self.primary:
            sip = settings.sip
            changes["sip"] = dataclasses.replace(
                sip, listen=tuple(lst for lst in sip.listen if lst.transport == "udp"))
            changes["http"] = dataclasses.replace(settings.http, listen=())
            changes["admin"] = dataclasses.replace(settings.admin,
                                                   socket=f"{settings.admin.socket}.w{self.index}")
            smtp = settings.smtp
            spool = smtp.spool or os.path.join(os.path.dirname(settings.store.path) or ".", "mail-spool")
            changes["smtp"] = dataclasses.replace(smtp, spool=os.path.join(spool, f"w{self.index}"))
            changes["provision"] = ()  # the primary imported them
        return dataclasses.replace(settings, **changes)

    # ---- the SIP path
    def wrap_sink(self, sink):
        """A sink that forwards UDP messages of other workers' Call-IDs to their owner."""
        self.sink = sink
        index, count, owner = self.index, self.count, shard.owner
        forward = self._forward

        stats = self.stats

        def shard_sink(data, channel, addr):
            if channel.kind == "udp":
                stats["received"] += 1
                o = owner(data, count)
                if o >= 0 and o != index:
                    forward(o, data, channel, addr)
                    return
            sink(data, channel, addr)

        return shard_sink

    def _forward(self, o: int, data, channel, addr) -> None:
        host = addr[0].encode()
        head = struct.pack("!cBHB", SIP, channel.index, addr[1], len(host))
        try:
            self.peers[o].send(head + host + data)
        except (BlockingIOError, InterruptedError):
            self.stats["dropped"] += 1  # as a full socket buffer drops: the sender re-sends
        except OSError as exc:
            self.stats["dropped"] += 1
            log.debug("worker %d: forward to %d failed: %s", self.index, o, exc)
        else:
            self.stats["forwarded"] += 1

    def _send(self, j: int, message: bytes) -> None:
        """A message that must arrive (bindings, provisioning, bans): queued while the pair's
        buffer is full."""
        backlog = self._backlog.get(j)
        if backlog:
            backlog.append(message)
            return
        try:
            self.peers[j].send(message)
        except (BlockingIOError, InterruptedError):
            self._backlog[j] = [message]
            self.loop.add_writer(self.peers[j].fileno(), self._drain, j)
        except OSError as exc:
            log.error("worker %d: message to worker %d lost: %s", self.index, j, exc)

    def _drain(self, j: int) -> None:
        backlog = self._backlog[j]
        while backlog:
            try:
                self.peers[j].send(backlog[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("worker %d: messages to worker %d lost: %s", self.index, j, exc)
                backlog.clear()
                break
            backlog.pop(0)
        del self._backlog[j]
        self.loop.remove_writer(self.peers[j].fileno())

    def _broadcast(self, message: bytes) -> None:
        for j in self.peers:
            self._send(j, message)

    def _readable(self, sock: socket.socket) -> None:
        udp = self.server.transports.udp
        sink = self.sink
        for _ in range(256):
            try:
                m = sock.recv(BUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not m:
                continue
            kind = m[:1]
            try:
                if kind == SIP:
                    _, ci, port, hl = struct.unpack_from("!cBHB", m)
                    host = m[5:5 + hl].decode()
                    self.stats["received_forwarded"] += 1
                    sink(m[5 + hl:], udp[ci], (host, port))
                else:
                    self._control(kind, m[1:])
            except Exception:
                log.exception("worker %d: message from another worker not handled", self.index)

    # ---- what is shared
    def share_bindings(self, puts, deletes) -> None:
        if not self.peers or not (puts or deletes):
            return
        self.stats["bindings_shared"] += len(puts) + len(deletes)
        rows = [_encode_binding(b) for b in puts]
        dels = orjson.dumps(deletes)
        chunk, size = [], 0
        for row in rows:
            chunk.append(row)
            size += len(row)
            if size >= MAX_CHUNK:
                self._broadcast(REG + b'{"del":[],"put":[' + b",".join(chunk) + b"]}")
                chunk, size = [], 0
        self._broadcast(REG + b'{"del":' + dels + b',"put":[' + b",".join(chunk) + b"]}")

    def _control(self, kind: bytes, body: bytes) -> None:
        server = self.server
        if kind == REG:
            doc = orjson.loads(body)
            now = time.time()
            puts = [_decode_binding(row, now) for row in doc["put"]]
            deletes = [tuple(d) for d in doc["del"]]
            self.stats["bindings_received"] += len(puts) + len(deletes)
            server.registrar.apply_remote(puts, deletes)
        elif kind == TENANT:
            self.stats["tenants_reloaded"] += 1
            server.provisioning.reload_tenant(body.decode())
        elif kind == BAN:
            m = orjson.loads(body)
            guard = server.security.guard
            for host in m["unban"]:
                guard.unban(host)
            now = time.time()
            for host, reason, until, *_ in m["ban"]:
                if until > now:
                    try:
                        guard.ban(host, until - now, reason, now)
                    except ValueError:
                        pass

    def _share_provisioning(self, provisioning) -> None:
        """Every tenant this worker commits a change to is read again by the others."""
        commit = provisioning._commit

        def shared_commit(old, new, write, check=(), users=None):
            commit(old, new, write, check, users)
            objs = new if new is not None else old
            if objs is not None:
                self._broadcast(TENANT + objs.tenant.name.encode())

        provisioning._commit = shared_commit

    def _share_bans(self, security) -> None:
        """Bans and unbans this worker's ban service stores go to the others as well."""
        group = self
        local = security.store

        class WorkerBans:
            def write(self, bans=(), unbans=(), counters=None):
                if local is not None:
                    local.write(bans, unbans, counters)
                if bans or unbans:
                    group._broadcast(BAN + orjson.dumps({"ban": list(bans), "unban": list(unbans)}))

            def __getattr__(self, name):
                return getattr(local, name)

        security.store = WorkerBans()
        add = security.ban_add

        def ban_add(host, secs=None):
            """An admin ban is stored and shared at once (bans the receive path makes go
            with the ban service's drain, within a second)."""
            result = add(host, secs)
            security.drain()
            return result

        security.ban_add = ban_add

    # ---- admin: calls of every worker
    def _rpc_answer(self, sock: socket.socket) -> None:
        try:
            m = sock.recv(BUF)
        except (BlockingIOError, InterruptedError, OSError):
            return
        if not m:
            return
        seq, method, arg = orjson.loads(m[1:])
        calls = self.server.calls
        if method == "list_calls":
            result = calls.list_calls()
        elif method == "hangup":
            result = calls.hangup(arg)
        elif method == "summary":
            result = self.summary()
        else:
            result = None
        try:
            sock.send(REPLY + orjson.dumps((seq, result)))
        except OSError as exc:
            log.warning("worker %d: admin answer lost: %s", self.index, exc)

    def _ask(self, j: int, method: str, arg=None, timeout: float = 1.0):
        """One admin question to worker j, answered within ``timeout`` (the admin call waits)."""
        sock = self.rpc[j]
        self._rpc_seq += 1
        seq = self._rpc_seq
        sock.send(RPC + orjson.dumps((seq, method, arg)))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker {j} did not answer {method}")
            sock.settimeout(left)
            m = sock.recv(BUF)
            got, result = orjson.loads(m[1:])
            if got == seq:
                return result

    def _ask_all(self, method: str, arg=None):
        out = {}
        for j in sorted(self.rpc):
            try:
                out[j] = self._ask(j, method, arg)
            except (OSError, TimeoutError) as exc:
                log.warning("worker %d: %s", j, exc)
        return out

    def list_calls(self):
        calls = self.server.calls.list_calls()
        for j, more in self._ask_all("list_calls").items():
            calls += more
        return calls

    def hangup(self, call_id: str) -> bool:
        if self.server.calls.hangup(call_id):
            return True
        return any(self._ask_all("hangup", call_id).values())

    def summary(self) -> dict:
        s = self.server
        return {"worker": self.index, "pid": os.getpid(), "calls": len(s.calls.calls),
                "bindings": s.registrar.count(), **s.calls.counters(), **s.registrar.stats,
                **self.stats}

    def workers_stats(self) -> dict:
        rows = [self.summary()] + list(self._ask_all("summary").values())
        return {"count": self.count, "up": len(rows), "workers": rows}

    # ---- wiring into a started server
    def attach(self, server) -> None:
        """After ``Server.start``: listen to the other workers, share what must be shared;
        the primary starts the others."""
        self.server = server
        self.loop = asyncio.get_running_loop()
        registrar = server.registrar
        registrar.store = SharedRegistrations(registrar.store, self)
        if not getattr(server, "clustered", False):
            # a binding belongs to the worker owning its REGISTER's Call-ID: only that one
            # sends its NAT keepalives and deletes its row when it expires
            registrar.node = f"w{self.index}"
            for bindings in registrar.bindings.values():
                for b in bindings:
                    if not b.node:
                        b.node = f"w{max(0, shard.owner_of(b.call_id or '', self.count))}"
        self._share_provisioning(server.provisioning)
        self._share_bans(server.security)
        for sock in self.peers.values():
            self.loop.add_reader(sock.fileno(), self._readable, sock)
        if server.settings.server.spread == "random":
            for channel in server.transports.udp:
                spread_evenly(channel.sock, self.count)
        if self.primary:
            if server.admin is not None:
                ctx = server.admin.ctx
                ctx.list_calls = self.list_calls
                ctx.hangup_call = self.hangup
                ctx.stats_sources["workers"] = self.workers_stats
            if self._child_ends:  # not started early
                self._spawn(server.settings)
            self._watch = self.loop.create_task(self._watch_workers())
        else:
            self.rpc.setblocking(False)
            self.loop.add_reader(self.rpc.fileno(), self._rpc_answer, self.rpc)
            if server.admin is not None:
                server.admin.ctx.stats_sources["workers"] = self.summary

    def spawn_early(self, settings) -> None:
        """(primary) With a provisioned SQLite store the others start at once, loading it
        beside us on the other cores (an empty store is imported by the primary first)."""
        path = settings.store.path
        if getattr(settings.store, "backend", "sqlite") != "sqlite" or not os.path.exists(path):
            return
        import sqlite3
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                provisioned = db.execute("SELECT 1 FROM tenants LIMIT 1").fetchone() is not None
            finally:
                db.close()
        except sqlite3.Error:
            return
        if provisioned:
            self._spawn(settings)

    def _spawn(self, settings) -> None:
        cmd = [sys.executable, "-m", "hpbx", "serve", "--config", settings.path]
        for j, (ends, rpc) in sorted(self._child_ends.items()):
            fds = ",".join(f"{k}:{s.fileno()}" for k, s in ends.items())
            env = dict(os.environ, **{ENV: f"{j}/{self.count}/{rpc.fileno()};{fds}"})
            keep = [s.fileno() for s in ends.values()] + [rpc.fileno()]
            self.procs[j] = subprocess.Popen(cmd, env=env, pass_fds=keep, start_new_session=False)
            log.info("worker %d started (pid %d)", j, self.procs[j].pid)
        for ends, rpc in self._child_ends.values():  # their ends are theirs now
            for s in ends.values():
                s.close()
            rpc.close()
        self._child_ends = {}

    def reload_others(self) -> None:
        """(primary) A settings reload here is one in every worker (SIGHUP)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)

    async def _watch_workers(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for j, p in self.procs.items():
                if p.poll() is not None and not self._stopping:
                    log.error("worker %d (pid %d) ended with %s: stopping the group", j, p.pid,
                              p.returncode)
                    self.server.request_stop()
                    return

    def wait_ready(self, timeout: float = 60.0) -> int:
        """(primary) Until every worker answers; returns how many do."""
        deadline = time.monotonic() + timeout
        up = set()
        while time.monotonic() < deadline and len(up) < len(self.rpc):
            for j in self.rpc:
                if j not in up:
                    try:
                        self._ask(j, "summary", timeout=0.2)
                        up.add(j)
                    except (OSError, TimeoutError):
                        pass
        return len(up)

    async def stop(self) -> None:
        """(primary) The other workers end their calls and stop, then we do."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for j, p in self.procs.items():
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                log.error("worker %d did not stop: killed", j)
                p.kill()
                p.wait()
