"""The registrar (RFC 3261 §10, RFC 5626 instance-id/reg-id) with digest authentication.

Bindings live in memory (username -> list of Binding) and in the registrations table. A
REGISTER changes memory at once, queues its rows, and its 200 leaves only after the batch it
is in has been committed (at most one commit per COMMIT_INTERVAL): a binding acknowledged with
200 survives kill -9. A store whose ``write_batch`` returns an awaitable (Redis) has one batch
on its way at a time; the 200s of a batch leave when it is stored, and what arrives meanwhile
goes into the next one.

In a cluster (``node`` set) other nodes' changes arrive through ``apply_remote``; a binding
remembers the node that holds its flow, and only that node expires it in the store.
"""
from __future__ import annotations

import hashlib
import logging
import time

from hpbx.sip import edge, nat
from hpbx.sip.auth import Verdict
from hpbx.sip.transaction import Target, build_response, reply_address
from hpbx.store.registrations import Binding

log = logging.getLogger("hpbx.sip.registrar")

# expired bindings are looked for this often (lookups filter by expiry themselves, so a
# binding is never used after it expired; the sweep only frees it and its row)
SWEEP_SECS = 5.0
# the shortest time between two commits of the bindings table (so the longest a 200 waits)
COMMIT_INTERVAL = 0.002


TO_NOT_SIP = "To must be a SIP or SIPS URI"


def _to_is_sip(msg) -> bool:
    """Is the address of record (the To URI) one a SIP registrar binds (RFC 3261 §10.3)?"""
    return msg.to_addr.uri.scheme in ("sip", "sips")


class RegisterError(Exception):
    def __init__(self, status: int, reason: str, headers=()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class Registrar:
    def __init__(self, loop, wheel, store, authenticator, settings, clock=time.time):
        """Users are looked up through ``authenticator`` (the Directory's ``auth_user``)."""
        self.loop = loop
        self.wheel = wheel
        self.store = store
        self.auth = authenticator
        self.clock = clock
        self.configure(settings)
        self.bindings: dict[str, list[Binding]] = {}
        self._batch: dict[tuple[str, str], Binding | None] = {}
        self._refreshed: dict[tuple[str, str], Binding] = {}  # only expiry and Call-ID/CSeq moved
        self._replies: list = []
        self._flush_scheduled = False
        self._last_flush = float("-inf")
        self._writing = None  # the task storing an asynchronous store's batch
        self.node = ""
        self.peers: dict[str, tuple[str, int]] = {}  # cluster: node -> its SIP address (UDP)
        self._sweeper = None
        self.security = None  # hpbx.security.bans.BanService: judges and counts digest results
        self.stats = {"register_ok": 0, "register_401": 0, "register_403": 0, "register_err": 0}

    def configure(self, settings) -> None:
        sip = settings.sip
        self.max_devices = sip.max_devices
        self.min_expires = sip.min_expires
        self.max_expires = sip.max_expires
        self.default_expires = sip.default_expires

    # ---- start/stop
    def start(self) -> int:
        now = self.clock()
        loaded = self.store.load(now)
        for binding in loaded:
            self.bindings.setdefault(binding.username, []).append(binding)
        self._sweeper = self.wheel.call_later(SWEEP_SECS, self._sweep)
        return len(loaded)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if (self._batch or self._refreshed or self._replies) and self._writing is None:
            self._flush()

    async def drain(self) -> None:
        """Until every queued change is stored (an asynchronous store, at stop)."""
        while self._writing is not None or self._batch or self._refreshed or self._replies:
            if self._writing is None:
                self._flush()
            if self._writing is not None:
                await self._writing

    # ---- queries for the B2BUA and the admin layer
    def lookup(self, username: str) -> list[Binding]:
        now = self.clock()
        return [b for b in self.bindings.get(username, ()) if b.expires_at > now]

    def target(self, binding: Binding) -> Target:
        """Where requests to this binding go: the NAT's address (and connection) when needed;
        the node holding its flow when that is another node (see ``relay_route``)."""
        if binding.behind_nat or binding.transport != "udp":
            if binding.node != self.node:
                peer = self.peers.get(binding.node)
                if peer is not None:
                    return Target("udp", peer[0], peer[1])
                # that node is gone: its connection ids mean nothing here
                return Target(binding.transport, binding.source_host, binding.source_port)
            return Target(binding.transport, binding.source_host, binding.source_port,
                          binding.connection_id)
        host, port = nat.contact_hostport(binding.contact)
        if not host or not nat.is_ip(host):
            return Target(binding.transport, binding.source_host, binding.source_port)
        return Target(binding.transport, host, port or 5060)

    def relay_route(self, binding: Binding) -> str | None:
        """The Route that has the flow's node relay a request to this binding (``edge``), or
        None when this node reaches it itself."""
        if binding.node == self.node or not (binding.behind_nat or binding.transport != "udp"):
            return None
        peer = self.peers.get(binding.node)
        return None if peer is None else edge.flow_route(peer[0], peer[1], binding)

    def iter_bindings(self, username: str | None = None):
        """Live bindings (of one user, or of all users ordered by user name), lazily: a page
        of an admin listing costs the sort of the user names, not a dict per binding."""
        now = self.clock()
        names = (username,) if username is not None else sorted(self.bindings)
        for name in names:
            for b in self.bindings.get(name, ()):
                if b.expires_at > now:
                    yield b

    def count(self) -> int:
        return sum(len(v) for v in self.bindings.values())

    def remove(self, binding: Binding) -> None:
        """Drop a binding (keepalive grace over); persisted with the next batch."""
        current = self.bindings.get(binding.username)
        if current and binding in current:
            current.remove(binding)
            if not current:
                del self.bindings[binding.username]
            self._queue((binding.username, binding.contact), None)
            self._schedule_flush()

    def drop_unknown(self, directory, removed=None) -> None:
        """After a provisioning change: bindings of users that no longer exist go. ``removed``
        names the users the change deleted (None: look at every user with a binding)."""
        names = self.bindings if removed is None else [n for n in removed if n in self.bindings]
        gone = [name for name in names if directory.auth_user(name) is None]
        for name in gone:
            for binding in list(self.bindings.get(name, ())):
                self.remove(binding)
            log.info("%s: user deleted, bindings removed", name)

    # ---- REGISTER
    def challenge(self, msg, channel, addr) -> None:
        """A REGISTER without credentials, answered statelessly (RFC 3261 §8.2.7): 401, or
        400 for a To that is no SIP URI. The To tag is derived from the request, so that a
        retransmission gets the same one."""
        if not _to_is_sip(msg):
            status, reason, headers = 400, TO_NOT_SIP, ()
            self.stats["register_err"] += 1
        else:
            status, reason, headers = 401, None, self.auth.challenge_for(msg.to_addr.uri.user)
            self.stats["register_401"] += 1
        tag = hashlib.blake2s(f"{msg.via_branch}|{msg.call_id}|{msg.from_tag}".encode(
            "utf-8", "surrogateescape"), digest_size=6).hexdigest()
        channel.send(build_response(msg, status, reason, addr, tag, headers),
                     reply_address(msg, channel, addr))

    def handle(self, tx) -> None:
        msg = tx.msg
        try:
            self._register(tx, msg)
        except RegisterError as exc:
            self.stats["register_err"] += 1
            tx.respond(exc.status, exc.reason, exc.headers)

    def _register(self, tx, msg) -> None:
        to = msg.to_addr
        if not _to_is_sip(msg):
            raise RegisterError(400, TO_NOT_SIP)
        verdict, user, name = self.auth.check("REGISTER", msg.header("Authorization"))
        if self.security is not None:
            verdict = self.security.judge(verdict, name, tx.addr, tx.channel.kind, "REGISTER")
        if verdict is not Verdict.OK:
            if verdict is Verdict.FORBIDDEN:
                self.stats["register_403"] += 1
                log.info("[%s] REGISTER for %s: wrong credentials", msg.call_id, to.uri.user)
                tx.respond(403, "Forbidden")
            else:
                self.stats["register_401"] += 1
                tx.respond(401, None, self.auth.challenge_for(to.uri.user,
                                                              stale=verdict is Verdict.STALE))
            return
        if user.username != to.uri.user:
            raise RegisterError(403, "Forbidden auth ID")
        expires_hdr = msg.header("Expires")
        default = self.default_expires
        if expires_hdr is not None:
            try:
                default = int(expires_hdr.strip())
            except ValueError:
                raise RegisterError(400, "Bad Expires header") from None
            if default < 0:
                raise RegisterError(400, "Bad Expires header")
        contacts = msg.contacts
        now = self.clock()
        username = user.username
        current = self.bindings.get(username)
        if current is None:
            current = []
        if contacts:
            if contacts[0].star or (len(contacts) > 1 and any(c.star for c in contacts)):
                if len(contacts) != 1 or default != 0:
                    raise RegisterError(400, "Contact * needs Expires 0 and no other contact")
                for b in current:
                    self._queue((username, b.contact), None)
                current = []
            else:
                current = self._apply(msg, tx, user, contacts, default, current, now)
        if current:
            self.bindings[username] = current
        else:
            self.bindings.pop(username, None)
        headers = [("Contact", self._contact_value(b, now)) for b in current]
        self.stats["register_ok"] += 1
        self._replies.append((tx, headers))
        self._schedule_flush()

    def _apply(self, msg, tx, user, contacts, default, current, now):
        min_expires, max_expires = self.min_expires, self.max_expires
        changes = []
        for contact in contacts:
            expires = contact.expires
            if expires is None:
                expires = default
            if 0 < expires < min_expires:
                raise RegisterError(423, "Interval Too Brief", [("Min-Expires", str(min_expires))])
            changes.append((contact, expires if expires < max_expires else max_expires))
        current = list(current)
        username = user.username
        tenant = getattr(user, "tenant", None)
        addr = tx.addr
        source_host, source_port = addr[0], addr[1]
        channel = tx.channel
        transport = channel.kind
        conn_id = channel.id if channel.reliable else 0
        user_agent = msg.header("User-Agent")
        path = msg.header("Path")
        call_id = msg.call_id
        cseq = msg.cseq
        flags = getattr(user, "flags", None)
        user_nat = bool(getattr(flags, "behind_nat", False))
        for contact, expires in changes:
            curi = contact.uri
            uri = str(curi)
            params = contact.params
            instance = params.get("+sip.instance")
            reg_id = params.get("reg-id")
            reg_id_int = int(reg_id) if reg_id and reg_id.isdigit() else None
            existing = None
            for b in current:
                if instance is not None and b.instance_id == instance and b.reg_id == reg_id_int:
                    existing = b
                    break
                if b.contact == uri:
                    existing = b
                    break
            behind_nat = user_nat or nat.needs_nat(curi.host, curi.port, source_host, source_port,
                                                   transport)
            if existing is not None:
                if existing.call_id == call_id and existing.cseq is not None and cseq <= existing.cseq:
                    raise RegisterError(500, "Out of order REGISTER")
                if (expires and existing.contact == uri and existing.source_port == source_port
                        and existing.source_host == source_host and existing.transport == transport
                        and existing.connection_id == conn_id and existing.instance_id == instance
                        and existing.reg_id == reg_id_int and existing.q == contact.q
                        and existing.user_agent == user_agent and existing.path == path
                        and existing.behind_nat == behind_nat and existing.tenant == tenant
                        and existing.node == self.node):
                    # a refresh: the same device at the same address; only the expiry and the
                    # registration's Call-ID/CSeq move, and only those are written
                    existing.expires_at = now + expires
                    existing.registered_at = now
                    existing.call_id = call_id
                    existing.cseq = cseq
                    existing.online = True
                    existing.last_seen = now
                    self._refreshed[(username, uri)] = existing
                    continue
                current.remove(existing)
                if existing.contact != uri:
                    self._queue((username, existing.contact), None)
            if expires == 0:
                if existing is not None:
                    self._queue((username, existing.contact), None)
                continue
            binding = Binding(
                username=username, contact=uri, tenant=tenant,
                instance_id=instance, reg_id=reg_id_int,
                q=contact.q, expires_at=now + expires, registered_at=now,
                source_host=source_host, source_port=source_port, transport=transport,
                connection_id=conn_id, user_agent=user_agent, path=path, call_id=call_id,
                cseq=cseq, behind_nat=behind_nat, online=True, last_seen=now, node=self.node)
            current.append(binding)
            self._queue((username, uri), binding)
        if len(current) > self.max_devices:
            # the device that refreshed least recently gives way to the new one
            current.sort(key=lambda b: b.registered_at)
            for old in current[:len(current) - self.max_devices]:
                self._queue((username, old.contact), None)
                log.info("[%s] %s: binding %s replaced (max %d devices)", call_id, username,
                         old.contact, self.max_devices)
            current = current[len(current) - self.max_devices:]
        return current

    @staticmethod
    def _contact_value(binding: Binding, now: float) -> str:
        value = f"<{binding.contact}>;expires={max(0, int(binding.expires_at - now + 0.5))}"
        if binding.instance_id is not None:
            value += f";+sip.instance={binding.instance_id}"
            if binding.reg_id is not None:
                value += f";reg-id={binding.reg_id}"
        return value

    # ---- persistence: one transaction per loop iteration, then the 200s
    def _queue(self, key: tuple[str, str], binding: Binding | None) -> None:
        self._batch[key] = binding

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # at most one commit per COMMIT_INTERVAL: under load a commit (its WAL writes)
            # then carries many registrations instead of the few of one loop iteration
            due = self._last_flush + COMMIT_INTERVAL
            if self.loop.time() >= due:
                self.loop.call_soon(self._flush)
            else:
                self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writing is not None:
            return  # the batch on its way schedules the next flush when it is stored
        self._last_flush = self.loop.time()
        batch, self._batch = self._batch, {}
        refreshed, self._refreshed = self._refreshed, {}
        replies, self._replies = self._replies, []
        if batch or refreshed:
            upserts = [b for b in batch.values() if b is not None]
            deletes = [k for k, b in batch.items() if b is None]
            # a refreshed binding that was also replaced or removed in this batch is written
            # whole (or deleted) above
            refreshes = [b for k, b in refreshed.items() if k not in batch]
            try:
                pending = self.store.write_batch(upserts, deletes, refreshes)
            except Exception:
                log.exception("registrations: commit of %d changes failed", len(batch) + len(refreshes))
                for tx, _ in replies:
                    tx.respond(500, "Registration Not Stored")
                return
            if pending is not None:
                self._writing = self.loop.create_task(self._stored(pending, replies))
                return
        for tx, headers in replies:
            tx.respond(200, None, headers)

    async def _stored(self, pending, replies) -> None:
        try:
            await pending
        except Exception:
            log.exception("registrations: batch of %d replies not stored", len(replies))
            for tx, _ in replies:
                tx.respond(500, "Registration Not Stored")
        else:
            for tx, headers in replies:
                tx.respond(200, None, headers)
        finally:
            self._writing = None
            if self._batch or self._refreshed or self._replies:
                self._schedule_flush()

    # ---- other nodes' changes (cluster)
    def apply_remote(self, puts, deletes) -> None:
        """Bindings another node stored (``puts``: Binding, replacing the same contact) and
        removed (``deletes``: (username, contact)). Nothing is written back."""
        bindings = self.bindings
        for b in puts:
            current = bindings.get(b.username)
            if current is None:
                bindings[b.username] = [b]
                continue
            for i, old in enumerate(current):
                if old.contact == b.contact:
                    current[i] = b
                    break
            else:
                current.append(b)
        for username, contact in deletes:
            current = bindings.get(username)
            if current:
                current[:] = [b for b in current if b.contact != contact]
                if not current:
                    del bindings[username]

    def replace_all(self, loaded) -> None:
        """Every binding as the shared store now has them (after missed changes)."""
        self.bindings = {}
        for binding in loaded:
            self.bindings.setdefault(binding.username, []).append(binding)

    # ---- expiry
    def _sweep(self) -> None:
        # a scan, not a heap of expiry times: a heap grows by one entry per refresh, and a
        # registration storm refreshes far more often than bindings expire
        now = self.clock()
        removed = 0
        for username in [u for u, bs in self.bindings.items() if any(b.expires_at <= now for b in bs)]:
            current = self.bindings[username]
            for b in [b for b in current if b.expires_at <= now]:
                current.remove(b)
                if b.node == self.node:  # another node's binding: its node deletes the row
                    self._queue((username, b.contact), None)
                    removed += 1
            if not current:
                del self.bindings[username]
        if removed:
            self._schedule_flush()
        self._sweeper = self.wheel.call_later(SWEEP_SECS, self._sweep)
