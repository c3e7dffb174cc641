"""SIP transports: UDP, TCP and TLS listeners over IPv4 and IPv6, and the connection table.

Every received message is handed to ``sink(data, channel, addr)`` where ``channel`` is what the
answer goes back through (the UDP socket it came in on, or the stream connection) and ``addr``
is the peer's (host, port). A channel has ``send(data, addr)``; stream connections ignore
``addr``. Requests towards a phone that registered over TCP/TLS reuse its connection, found by
connection id (stored with the binding) or by the peer's address.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl

from hpbx._fast import sipmsg, udpio
from hpbx.errors import SipParseError
from hpbx.sip import tls

log = logging.getLogger("hpbx.sip.transport")

PING = b"\r\n\r\n"
PONG = b"\r\n"
UDP_RCVBUF = 4 << 20
TLS_HANDSHAKE_SECS = 10.0


class UdpChannel:
    """One UDP listener. Datagrams are read in batches (recvmmsg) when the socket is readable;
    what is sent during a loop iteration is handed at its end, as one batch, to a native
    sender thread (sendmmsg), so the kernel's share of sending is not on the event loop."""

    kind = "udp"
    reliable = False
    # batches read per wakeup at most, so that timers and stream connections get their turn
    MAX_BATCHES = 8

    def __init__(self, hub: "TransportHub", listener):
        self.hub = hub
        self.listener = listener
        self.sock: socket.socket | None = None
        self.io: udpio.DatagramIO | None = None
        self.local_host = listener.host
        self.local_port = listener.port
        self.id = 0
        self.index = len(hub.udp)  # position in hub.udp (completed transactions name it)
        self._flush_due = False  # a flush is scheduled, or the read loop will flush
        self._writer = False
        self._notify = -1  # eventfd: the sender thread finished a batch while more waited

    def open(self) -> None:
        family = socket.AF_INET6 if self.listener.family_v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, UDP_RCVBUF)
                except OSError:
                    pass
            if getattr(getattr(self.hub.settings, "server", None), "workers", 1) > 1:
                # [server] workers: every worker binds the listener (hpbx/cluster/workers.py)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.listener.host, self.listener.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.local_port = sock.getsockname()[1]
        self.io = udpio.DatagramIO(sock.fileno(), family)
        if self.hub.guard is not None:
            self.io.guard = self.hub.guard  # banned sources are dropped inside recv()
        loop = self.hub.loop
        try:
            self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.io.start_sender(self._notify)
            loop.add_reader(self._notify, self._sent)
        except OSError as exc:  # no thread: the loop sends itself
            log.warning("udp %s: sending from the event loop (%s)", self.listener, exc)
            if self._notify >= 0:
                os.close(self._notify)
                self._notify = -1
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        io = self.io
        sink = self.hub.sink
        self._flush_due = True  # sends made while reading leave with the flush below
        try:
            for _ in range(self.MAX_BATCHES):
                try:
                    batch = io.recv()
                except OSError as exc:
                    log.debug("udp %s: %s", self.listener, exc)
                    break
                for data, addr in batch:
                    if len(data) <= 4 and not data.strip(b"\r\n"):
                        # RFC 5626 keepalive over UDP is STUN, but phones send CRLFCRLF too:
                        # answer CRLF
                        if data == PING:
                            self.send(PONG, addr)
                        continue
                    try:
                        sink(data, self, addr)
                    except Exception:  # one bad datagram must not cost the rest of the batch
                        log.exception("udp %s: datagram from %s not handled", self.listener, addr)
                if len(batch) < udpio.BATCH:
                    break
        finally:
            self._flush()

    def send(self, data: bytes, addr) -> None:
        io = self.io
        if io is None:
            return
        if self.hub.mirror is not None:
            self.hub.mirror.sent(data, self, addr)
        try:
            waiting = io.queue(data, addr)
        except ValueError:
            # a host name (a trunk configured by name): the socket resolves it
            try:
                self.sock.sendto(data, addr)
            except OSError as exc:
                log.debug("udp send to %s failed: %s", addr, exc)
            return
        if waiting >= udpio.SEND_BATCH:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            self.hub.loop.call_soon(self._flush)

    def _sent(self) -> None:
        try:
            os.eventfd_read(self._notify)
        except BlockingIOError:
            pass
        self._flush()

    def _flush(self) -> None:
        self._flush_due = False
        io = self.io
        if io is None:
            return
        left = io.flush()
        if io.threaded:
            return  # what is left goes when the thread reports its batch done (_sent)
        if left and not self._writer:
            # the socket buffer is full: the rest goes when it drains
            self.hub.loop.add_writer(self.sock.fileno(), self._flush)
            self._writer = True
        elif not left and self._writer:
            self.hub.loop.remove_writer(self.sock.fileno())
            self._writer = False

    def close(self) -> None:
        if self.sock is None:
            return
        loop = self.hub.loop
        fd = self.sock.fileno()
        loop.remove_reader(fd)
        if self._writer:
            loop.remove_writer(fd)
            self._writer = False
        io, self.io = self.io, None
        try:
            io.stop_sender()  # what the thread holds is sent before it ends
            io.flush()
        except OSError:
            pass
        if self._notify >= 0:
            loop.remove_reader(self._notify)
            os.close(self._notify)
            self._notify = -1
        self.sock.close()
        self.sock = None

    def __repr__(self):
        return f"<udp {self.local_host}:{self.local_port}>"


class StreamConnection(asyncio.Protocol):
    reliable = True

    def __init__(self, hub: "TransportHub", kind: str, local_host: str, local_port: int):
        self.hub = hub
        self.kind = kind
        self.local_host = local_host
        self.local_port = local_port
        self.id = next(hub._conn_ids)
        self.transport = None
        self.peer: tuple[str, int] | None = None
        self.framer = sipmsg.Framer()
        self.pending: list[bytes] = []  # written before an outgoing connect completed
        self.closed = False
        self.last_rx = hub.loop.time()
        self.last_pong = 0.0

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        guard = self.hub.guard
        if guard is not None and not guard.allowed(self.peer[0]):
            self.closed = True  # a banned source: no answer, not even a FIN
            transport.abort()
            return
        self.last_rx = self.hub.loop.time()
        self.hub._add_connection(self)
        for data in self.pending:
            transport.write(data)
        self.pending.clear()

    def data_received(self, data):
        self.last_rx = self.hub.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.info("%s %s:%s: framing error (%s): closing", self.kind, *self.peer, exc.reason)
            self.close()
            return
        sink = self.hub.sink
        guard = self.hub.guard
        for msg in messages:
            if guard is not None and not guard.check(self.peer[0], msg):
                self.close()  # banned now (flood, scanner): the rest goes unread
                return
            if msg == PING:
                self.transport.write(PONG)
            elif msg == PONG:
                self.last_pong = self.last_rx
            else:
                sink(msg, self, self.peer)

    def connection_lost(self, exc):
        self.closed = True
        self.hub._remove_connection(self)

    def send(self, data: bytes, addr=None) -> None:
        if self.closed:
            return
        if self.hub.mirror is not None:
            self.hub.mirror.sent(data, self, self.peer)
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def __repr__(self):
        return f"<{self.kind} #{self.id} {self.peer}>"


class TlsAcceptor(asyncio.Protocol):
    """A TCP connection accepted on a tls: listener, with its TLS layer run here (an SSLObject
    over memory BIOs): a banned source is dropped before the handshake costs anything, the
    handshake uses the server context in force at accept (a reloaded certificate serves every
    new connection, established ones keep theirs), and it must end within
    TLS_HANDSHAKE_SECS. Towards its StreamConnection it is the transport."""

    def __init__(self, hub: "TransportHub", listener):
        self.hub = hub
        self.listener = listener
        self.transport = None
        self.conn: StreamConnection | None = None
        self.sslobj = None
        self.established = False
        self.closing = False
        self.timer = None

    # ---- the TCP side
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        guard = self.hub.guard
        if guard is not None and not guard.allowed(self.peer[0]):
            self.closing = True
            transport.abort()  # a banned source: no handshake, no answer
            return
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = self.hub.server_tls_context().wrap_bio(self.incoming, self.outgoing,
                                                             server_side=True)
        self.timer = self.hub.loop.call_later(TLS_HANDSHAKE_SECS, self._too_slow)

    def data_received(self, data):
        if self.sslobj is None or self.closing:
            return
        self.incoming.write(data)
        if not self.established:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                log.info("tls %s:%s: handshake failed: %s", *self.peer, exc)
                self._flush()
                self._drop()
                return
            self.established = True
            self.timer.cancel()
            self._flush()
            self.conn = StreamConnection(self.hub, "tls", self.listener.host, self.listener.port)
            self.conn.connection_made(self)
        chunks = []
        while True:
            try:
                chunk = self.sslobj.read(1 << 16)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.close()
                break
            except ssl.SSLError as exc:
                log.info("tls %s:%s: %s", *self.peer, exc)
                self._drop()
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        if chunks and self.conn is not None and not self.conn.closed:
            self.conn.data_received(b"".join(chunks))

    def eof_received(self):
        return False  # close

    def connection_lost(self, exc):
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if self.conn is not None:
            self.conn.connection_lost(exc)

    def _too_slow(self) -> None:
        log.info("tls %s:%s: no handshake within %.0f s", *self.peer, TLS_HANDSHAKE_SECS)
        self._drop()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _drop(self) -> None:
        self.closing = True
        self.transport.abort()

    # ---- the transport its StreamConnection writes to
    def write(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError as exc:
            log.info("tls %s:%s: write failed: %s", *self.peer, exc)
            self._drop()
            return
        self._flush()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self.sslobj
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.closing or self.transport.is_closing()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            self.sslobj.unwrap()  # close_notify
        except (ssl.SSLError, OSError):
            pass
        self._flush()
        self.transport.close()

    def abort(self) -> None:
        self._drop()


class TransportHub:
    """All listeners of the server and the table of open stream connections."""

    def __init__(self, loop, settings, sink):
        self.loop = loop
        self.sink = sink
        self.settings = settings
        self.udp: list[UdpChannel] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.connections: dict[int, StreamConnection] = {}
        self.by_peer: dict[tuple[str, str, int], StreamConnection] = {}
        self._conn_ids = itertools.count(1)
        self._tls_server_ctx: ssl.SSLContext | None = None
        self._tls_client_ctx: ssl.SSLContext | None = None
        self.stream_listeners: list[tuple[str, str, int]] = []  # (kind, host, bound port)
        # hpbx._fast.guard.Guard: asked for every message and accepted connection (bans)
        self.guard = None
        # hpbx.sip.hep.HepMirror when [hep] collector is set: gets a copy of every message sent
        # (received ones reach it through the sink it wraps)
        self.mirror = None

    async def start(self) -> None:
        sip = self.settings.sip
        for listener in sip.listen:
            family = socket.AF_INET6 if listener.family_v6 else socket.AF_INET
            if listener.transport == "udp":
                channel = UdpChannel(self, listener)
                channel.open()
                self.udp.append(channel)
            else:
                if listener.transport == "tls":
                    self.server_tls_context()  # a broken certificate stops the start here
                    factory = lambda lst=listener: TlsAcceptor(self, lst)  # noqa: E731
                else:
                    factory = lambda lst=listener: StreamConnection(self, lst.transport, lst.host,  # noqa: E731
                                                                    lst.port)
                server = await self.loop.create_server(
                    factory, host=listener.host, port=listener.port, family=family,
                    reuse_address=True, backlog=1024)
                port = server.sockets[0].getsockname()[1]
                self.stream_listeners.append((listener.transport, listener.host, port))
                self.servers.append(server)
            log.info("listening on %s", listener)

    def server_tls_context(self) -> ssl.SSLContext:
        if self._tls_server_ctx is None:
            self._tls_server_ctx = tls.server_context(self.settings)
        return self._tls_server_ctx

    def _client_tls_context(self) -> ssl.SSLContext:
        if self._tls_client_ctx is None:
            self._tls_client_ctx = tls.client_context(self.settings)
        return self._tls_client_ctx

    def reload_tls(self, settings) -> bool:
        """Build the TLS contexts from ``settings`` (certificate files read again) and use them
        for new connections; established ones keep theirs. Raises ConfigError (the old
        contexts stay) when a file is broken. False when no tls: listener runs."""
        if not any(kind == "tls" for kind, _, _ in self.stream_listeners):
            self._tls_client_ctx = None
            return False
        server = tls.server_context(settings)
        client = tls.client_context(settings)
        self._tls_server_ctx, self._tls_client_ctx = server, client
        return True

    def _add_connection(self, conn: StreamConnection) -> None:
        self.connections[conn.id] = conn
        self.by_peer[(conn.kind, conn.peer[0], conn.peer[1])] = conn

    def _remove_connection(self, conn: StreamConnection) -> None:
        self.connections.pop(conn.id, None)
        if conn.peer is not None:
            key = (conn.kind, conn.peer[0], conn.peer[1])
            if self.by_peer.get(key) is conn:
                del self.by_peer[key]

    def udp_channel(self, host: str) -> UdpChannel | None:
        """The UDP socket to send from towards ``host`` (same address family)."""
        v6 = ":" in host
        for channel in self.udp:
            if channel.listener.family_v6 == v6:
                return channel
        return None

    def local_address(self, kind: str, host: str) -> tuple[str, int]:
        """Our sent-by (host, port) for a request towards ``host`` over ``kind``."""
        advertise = self.settings.sip.advertise
        v6 = ":" in host
        if kind == "udp":
            candidates = [(c.local_host, c.local_port, c.listener.family_v6) for c in self.udp]
        else:
            candidates = [(h, p, ":" in h) for k, h, p in self.stream_listeners if k == kind]
        for cand_host, cand_port, cand_v6 in candidates:
            if cand_v6 == v6:
                return (advertise or cand_host, cand_port)
        if candidates:
            return (advertise or candidates[0][0], candidates[0][1])
        return (advertise or host, 5060)

    def channel_for(self, kind: str, host: str, port: int, conn_id: int = 0):
        """A channel towards a peer: its open connection when there is one, else a new one."""
        if kind == "udp":
            return self.udp_channel(host)
        if conn_id:
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closed:
                return conn
        conn = self.by_peer.get((kind, host, port))
        if conn is not None and not conn.closed:
            return conn
        return self._connect(kind, host, port)

    def _connect(self, kind: str, host: str, port: int) -> StreamConnection:
        local = self.local_address(kind, host)
        conn = StreamConnection(self, kind, local[0], local[1])
        ctx = self._client_tls_context() if kind == "tls" else None

        async def connect():
            try:
                # with ssl, the certificate is checked against ``host`` (a name or an address)
                await self.loop.create_connection(lambda: conn, host, port, ssl=ctx,
                                                  server_hostname=host if ctx else None)
            except (OSError, ssl.SSLError) as exc:
                log.info("%s connect to %s:%s failed: %s", kind, host, port, exc)
                conn.closed = True
                conn.pending.clear()

        self.loop.create_task(connect())
        return conn

    def close(self) -> None:
        for channel in self.udp:
            channel.close()
        for server in self.servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.close()
        self.udp.clear()
        self.servers.clear()
