"""The running server: wires settings, store, SIP layers and admin; start, reload, stop.

``run(settings)`` (called by ``hpbx serve``) runs one asyncio loop (uvloop when installed) until
SIGTERM/SIGINT, reloads the settings file on SIGHUP without touching registrations, and returns
the process exit status. ``Server`` holds the services in start order; stop runs in reverse.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hpbx import settings as settings_mod
from hpbx.errors import ConfigError, HpbxError
from hpbx.security.bans import BanService
from hpbx.security.toll import TollPolicy
from hpbx.sip.auth import Authenticator
from hpbx.sip.dispatcher import Dispatcher
from hpbx.sip.nat import KeepaliveService
from hpbx.sip.registrar import Registrar
from hpbx.sip.timers import TimerWheel
from hpbx.sip.transaction import TransactionLayer
from hpbx.sip.transport import TransportHub
from hpbx.store import backend
from hpbx.store.bans import BanStore

log = logging.getLogger("hpbx")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server:
    def __init__(self, settings: settings_mod.Settings):
        self.settings = settings
        self.store = None
        self.provisioning = None
        self.admin = None
        self._stopped: asyncio.Event | None = None
        self._stop_order: list = []  # callables (sync or async) run in reverse on stop
        self.workers = None  # hpbx.cluster.workers.Workers with [server] workers > 1

    # ---- wiring
    def _open_store(self) -> None:
        from hpbx.pbx.provisioning import Provisioning

        try:
            self.store = backend.open_store(self.settings.store)
        except HpbxError as exc:
            raise ConfigError(f"{self.settings.path}: store: {exc}") from None
        self._stop_order.append(self.store.close)
        self.provisioning = Provisioning(self.store)
        if self.store.is_empty() and self.settings.provision:
            for path in self.settings.provision:
                try:
                    text = Path(path).read_text()
                except OSError as exc:
                    raise ConfigError(f"{self.settings.path}: provision.files: cannot read {path}: "
                                      f"{exc.strerror}") from None
                try:
                    self.provisioning.import_tenant(text)
                except HpbxError as exc:
                    raise ConfigError(f"{path}: {exc}") from None
                log.info("imported %s into the empty store", path)

    def realm(self) -> str:
        return self.settings.sip.domain or "hpbx"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        settings = self.settings
        sip = settings.sip
        self._open_store()
        if hasattr(self.store, "listener"):
            # a store shared with other nodes: a tenant another node changed is read again
            listener = self.store.listener(self.provisioning.reload_tenant,
                                           self.provisioning.reload_all)
            listener.start(loop)
            self._stop_order.append(listener.stop)
        self.reg_store = backend.open_registrations(settings.store)
        self.clustered = bool(settings.store.redis)
        if self.clustered:
            await self._open_shared_registrations(loop)
        else:
            self._stop_order.append(self.reg_store.close)
        self.wheel = TimerWheel(loop)
        self._stop_order.append(self.wheel.close)
        self.auth = Authenticator(lambda name: self.provisioning.directory.auth_user(name),
                                  self.realm(), sip.nonce_ttl, sip.digest_algorithms)
        self.registrar = Registrar(loop, self.wheel, self.reg_store, self.auth, settings)
        if self.clustered:
            self.registrar.node = self.reg_store.node
            self._stop_order.append(self.registrar.drain)
        restored = self.registrar.start()
        self.provisioning.subscribe(self.registrar.drop_unknown)
        self._stop_order.append(self.registrar.stop)
        log.info("registrations restored from the store: %d", restored)
        self._start_security()
        # the sink is set below: the dispatcher needs the transaction layer, which needs the hub
        self.transports = TransportHub(loop, settings, None)
        self.transports.guard = self.security.guard
        self.transactions = TransactionLayer(self.wheel, self.transports, sip.t1_ms / 1000,
                                             sip.t2_ms / 1000, sip.t4_ms / 1000, sip.user_agent)
        self._stop_order.append(self.transactions.close)
        self.dispatcher = Dispatcher(self.transactions, self.registrar, sip.user_agent)
        self.transports.sink = self.dispatcher.on_message
        if settings.hep.collector:
            from hpbx.sip.hep import HepMirror, parse_collector
            self.transports.mirror = HepMirror(parse_collector(settings.hep.collector),
                                               settings.hep.capture_id, settings.hep.password)
            self.transports.sink = self.transports.mirror.wrap_sink(self.transports.sink)
            self._stop_order.append(self.transports.mirror.close)
            log.info("SIP mirrored as HEP v3 to %s", settings.hep.collector)
        if self.workers is not None:  # UDP messages of other workers' Call-IDs go to them
            self.transports.sink = self.workers.wrap_sink(self.transports.sink)
        # Messages that arrive before the services below are installed are held, not answered
        # by a half-built server (MWI's SUBSCRIBE would get 489, a fax number's INVITE 480, an
        # INVITE before the call service 405), and handed over in arrival order once started.
        serve = self.transports.sink
        self._held: list | None = []
        self.transports.sink = self._hold
        await self.transports.start()
        self._stop_order.append(self.transports.close)
        self.keepalive = KeepaliveService(self.wheel, self.registrar, self.transactions,
                                          self.transports, settings)
        self.keepalive.start()
        self._stop_order.append(self.keepalive.stop)
        self._start_calls(loop)
        if self.clustered:
            await self._start_ownership()
        if self.workers is None or self.workers.primary:
            self._start_retention()
        await self._start_mail()
        from hpbx.fax.service import install as install_fax
        install_fax(self)  # usage fax numbers: the virtual fax (issue 15)
        await self._start_admin()
        held, self._held = self._held, None
        self.transports.sink = serve
        for data, channel, addr in held:
            try:
                serve(data, channel, addr)
            except Exception:
                log.exception("message held during start-up from %s not handled", addr)
        if self.workers is not None:
            self.workers.attach(self)  # the primary starts the other workers here
            if self.workers.primary:
                self._stop_order.append(self.workers.stop)  # they stop first
        log.info("hpbx ready (%d users, %d bindings; %d messages held during start-up)",
                 len(self.provisioning.directory), self.registrar.count(), len(held))

    HOLD_MAX = 10_000  # messages kept while starting; more are dropped (UDP senders re-send)

    def _hold(self, data, channel, addr) -> None:
        held = self._held
        if held is not None and len(held) < self.HOLD_MAX:
            held.append((data, channel, addr))

    # ---- several nodes: shared registrations, provisioning changes, call ownership
    async def _open_shared_registrations(self, loop) -> None:
        """Redis: subscribed before it is read, so no other node's change is missed; the
        registrar (made next) gets them from then on."""
        def on_change(puts, deletes) -> None:
            self.registrar.apply_remote(puts, deletes)

        def on_resync(loaded) -> None:
            self.registrar.replace_all(loaded)

        try:
            await self.reg_store.open(time.time(), on_change, on_resync)
        except HpbxError as exc:
            await self.reg_store.aclose()
            raise ConfigError(f"{self.settings.path}: store.redis: {exc}") from None
        self._stop_order.append(self.reg_store.aclose)

    async def _start_ownership(self) -> None:
        from hpbx.cluster.ownership import CallOwnership
        from hpbx.sip.edge import EdgeRelay

        self.ownership = CallOwnership(self.settings.store.redis, self.reg_store.node,
                                       self.provisioning.cdr_add,
                                       self.transports.local_address("udp", ""))
        await self.ownership.start()
        self.calls.owners = self.ownership
        # phones whose flow another node holds are reached through that node, and the
        # requests other nodes send through us to our flows are relayed
        self.registrar.peers = self.ownership.peers
        self.dispatcher.edge = EdgeRelay(self.transports, self.ownership.peer_hosts.__contains__)
        # stopped after the call service has ended its calls (reverse order)
        self._stop_order.insert(self._stop_order.index(self.calls.close), self.ownership.stop)
        await self._share_bans()

    def _start_retention(self) -> None:
        """CDRs older than ``[store] cdr_retention_days`` go, checked at start and hourly."""
        def purge() -> None:
            days = self.settings.store.cdr_retention_days
            if days:
                cut = datetime.now(timezone.utc) - timedelta(days=days)
                try:
                    gone = self.provisioning.cdr_purge(cut.isoformat())["deleted"]
                except Exception:
                    log.exception("CDR retention: purge failed")
                else:
                    if gone:
                        log.info("CDR retention: %d records older than %d days deleted", gone, days)
            self._retention = self.wheel.call_later(3600, purge)

        purge()
        self._stop_order.append(lambda: self._retention.cancel())

    async def _share_bans(self) -> None:
        """A ban made or lifted on any node holds on every node (``hpbx.store.redis_bans``)."""
        from hpbx.store.redis_bans import SharedBans

        shared = SharedBans(self.ban_store, self.settings.store.redis, self.reg_store.node)
        guard = self.security.guard

        def on_ban(host: str, reason: str, until: float) -> None:
            now = time.time()
            if until > now:
                try:
                    guard.ban(host, until - now, reason, now)
                except ValueError:
                    log.warning("shared ban of %r ignored: not an IP address", host)

        for host, reason, until, _since in await shared.open(on_ban, guard.unban):
            on_ban(host, reason, until)
        self.security.store = shared
        # closed after the ban service's last drain has been shared (reverse order)
        self._stop_order.insert(self._stop_order.index(self.security.stop), shared.aclose)

    def _start_security(self) -> None:
        """Bans (restored from the store), fed by the digest results of registrar and B2BUA.
        Sources of restored bindings count as good (an office behind one NAT re-registering
        after a restart is not taken for a flood); trunks' addresses are trusted."""
        self.ban_store = BanStore(self.settings.store.path)
        self._stop_order.append(self.ban_store.close)
        self.security = BanService(self.settings, self.ban_store, self.wheel)
        self.security.start()
        self._stop_order.append(self.security.stop)
        self.registrar.security = self.security
        good = self.settings.security.good_secs
        if good:
            until = time.time() + good
            for b in self.registrar.iter_bindings():
                self.security.guard.mark_good(b.source_host, until)
        self._trust_trunks(self.provisioning.directory)
        self.provisioning.subscribe(lambda directory, removed=None: self._trust_trunks(directory))

    def _trust_trunks(self, directory) -> None:
        hosts = [trunk.host for tenant in directory.tenants()
                 for trunk in directory.objects(tenant.name).trunks.values()]
        self.security.set_trunks(hosts)

    def _start_calls(self, loop) -> None:
        """The media relay and the B2BUA (INVITE, ACK, BYE, UPDATE, INFO via the dispatcher)."""
        from hpbx.media.engine import MediaEngine
        from hpbx.pbx.calls import CallService

        self.media = MediaEngine.from_settings(self.settings.rtp)
        self.media.start()
        self._stop_order.append(self.media.close)
        self.calls = CallService(loop, self.wheel, self.transactions, self.transports, self.registrar,
                                 self.auth, self.provisioning, self.media, self.settings)
        self.media.on_timeout = self.calls.media_timeout
        from hpbx.pbx import announcements, conference, media_channel
        self.conferences = conference.install(self.calls, self.settings)  # usage "conference"
        self._stop_order.append(self.conferences.close)
        announcements.install(self.calls, self.settings)  # prompts, announcement steps, *200/*201
        media_channel.load_modules(self.calls)  # services of HPBX_SERVICE_MODULES
        self.calls.install(self.dispatcher)
        if not self.settings.store.redis:  # BLF and presence subscriptions survive a restart
            for notifier in (self.calls.blf, self.calls.presence):
                notifier.persist_to(self.settings.store.path)
        self.calls.security = self.security
        self.toll = TollPolicy(self.settings, self.ban_store)
        self.calls.toll = self.toll
        self.toll.on_block = self.calls.hangup_trunk_calls
        self.toll.zone_of = lambda t: getattr(self.provisioning.directory.tenant(t), "timezone", None)
        self.toll.call_later = self.wheel.call_later  # minutes budgets: cut the calls that spent it
        self.toll.on_cut = lambda cid, why: (c := self.calls.calls.get(cid)) is not None and c.guarded(c.hangup, why)
        self._stop_order.append(self.calls.close)
        watch = loop.create_task(self.media.watch())

        async def stop_watch() -> None:
            # cancelled and awaited: the media timeout poll has ended before media.close runs
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

        self._stop_order.append(stop_watch)

    async def _start_mail(self) -> None:
        """The outgoing mail spool (hpbx/mail/spool.py): what an earlier run left is sent."""
        from hpbx.mail.spool import MailSpool

        smtp = self.settings.smtp
        directory = smtp.spool or str(Path(self.settings.store.path).parent / "mail-spool")
        self.mail = MailSpool(smtp, directory)
        self.mail.open()
        await self.mail.start()
        self.toll.mail = self.mail  # toll-fraud alert mails
        self._stop_order.append(self.mail.stop)
        from hpbx.pbx import voicemail  # Voice2Mail, user mailboxes, MWI (issue 11)
        self.voicemail = voicemail.install(self.calls, self.mail, self.dispatcher, self.settings)
        self._stop_order.insert(self._stop_order.index(self.calls.close), self.voicemail.mwi.close)
        self._stop_order.insert(self._stop_order.index(self.calls.close), self.voicemail.push.close)

    async def _start_admin(self) -> None:
        try:
            from hpbx.admin.context import AdminContext
            from hpbx.admin.server import AdminServer
        except ImportError:
            return
        ctx = AdminContext(settings=self.settings, provisioning=self.provisioning,
                           list_registrations=self.list_registrations,
                           reload_config=self.reload,
                           list_calls=self.calls.list_calls, hangup_call=self.calls.hangup)
        ctx.stats_sources["calls"] = self.calls.counters
        ctx.stats_sources["sip"] = self.sip_stats
        ctx.stats_sources["registrar"] = self.registrar_stats
        if self.clustered:
            ctx.stats_sources["cluster"] = lambda: {
                "node": self.reg_store.node, **self.ownership.counters(), **self.reg_store.stats,
                **self.dispatcher.edge.stats, **self.security.store.stats}
        ctx.stats_sources["security"] = self.security.counts
        ctx.security = self.security
        ctx.stats_sources["toll"] = self.toll.counts
        ctx.toll = self.toll
        ctx.reload_tls = self.reload_tls
        ctx.stats_sources["media"] = self.media.media_stats  # players, recorders, rooms, jitter
        ctx.mail = self.mail
        ctx.stats_sources["mail"] = self.mail.counts
        ctx.conferences = self.conferences
        self.conferences.mail = self.mail  # invitations to scheduled conferences
        ctx.stats_sources["conference"] = lambda: {**self.conferences.stats, "rooms": len(self.conferences.rooms)}
        ctx.voicemail = self.voicemail
        ctx.stats_sources["voicemail"] = lambda: {**self.voicemail.stats, **self.voicemail.mwi.stats,
                                                  **self.voicemail.missed.stats,
                                                  **self.voicemail.recorder.stats,
                                                  **self.voicemail.push.stats}
        self._open_web_data(ctx)
        self.admin = AdminServer(ctx)
        await self.admin.start()
        self._stop_order.append(self.admin.stop)
        await self._start_web(ctx)

    def _open_web_data(self, ctx) -> None:
        """Admin accounts, audit log and phone records: kept in the store file, managed over
        the socket too, so they exist whether or not the web face listens."""
        from hpbx.admin.accounts import AccountService, AuditLog
        from hpbx.pbx.phones import PhoneService
        from hpbx.store.admins import AdminStore
        from hpbx.store.phones import PhoneStore

        self.admin_store = AdminStore(self.settings.store.path)
        self._stop_order.append(self.admin_store.close)
        ctx.accounts = AccountService(self.admin_store,
                                      lambda t: self.provisioning.directory.objects(t) is not None)
        ctx.audit = AuditLog(self.admin_store)
        self.phone_store = PhoneStore(self.settings.store.path)
        self._stop_order.append(self.phone_store.close)
        ctx.phones = PhoneService(self.phone_store, self.provisioning)

    async def _start_web(self, ctx) -> None:
        """The HTTP face ([http] listen; off when empty). Failed logins and wrong phone
        credentials go to the ban engine when the server has one."""
        self.web = None
        if not self.settings.http.listen:
            return
        from hpbx.web.server import WebServer

        self.web = WebServer(ctx, self.admin, self.settings, self.media)
        security = getattr(self, "security", None)
        if security is not None and hasattr(security, "auth_failed"):
            self.web.auth_failure_hooks.append(
                lambda host, port, kind, user: security.auth_failed(host, port, "http", kind, user))
            self.web.source_allowed = security.guard.allowed
        self._start_cti(ctx, security)
        await self.web.start()
        self._stop_order.append(self.web.stop)

    def _start_cti(self, ctx, security) -> None:
        """CTI clients at /cti on the web face's listeners (hpbx.cti.service); failed CTI
        logins feed the ban engine as failed web logins do."""
        from hpbx.cti.service import CtiService

        self.cti = CtiService(asyncio.get_running_loop(), self.calls, self.provisioning, self.registrar)
        self.web.route_hooks.append(self.cti.add_routes)
        if security is not None and hasattr(security, "auth_failed"):
            self.cti.auth_failure_hooks.append(
                lambda host, port, kind, user: security.auth_failed(host, port, "http", kind, user))
            self.cti.source_allowed = security.guard.allowed
        ctx.cti = self.cti
        ctx.stats_sources["cti"] = self.cti.counts
        self._stop_order.append(self.cti.close)

    # ---- what the admin layer reads
    def list_registrations(self, tenant: str | None, user: str | None):
        now = time.time()
        for b in self.registrar.iter_bindings(user):
            if tenant is not None and b.tenant != tenant:
                continue
            yield {"user": b.username, "tenant": b.tenant, "contact": b.contact,
                   "source": f"{b.source_host}:{b.source_port}", "transport": b.transport,
                   "user_agent": b.user_agent, "behind_nat": b.behind_nat,
                   "online": b.online, "expires_at": b.expires_at,
                   "expires_in": max(0, int(b.expires_at - now))}

    def sip_stats(self) -> dict:
        return {**self.dispatcher.stats, **self.transactions.stats(),
                "timers_pending": len(self.wheel), "connections": len(self.transports.connections)}

    def registrar_stats(self) -> dict:
        return {**self.registrar.stats, **self.keepalive.stats, "bindings": self.registrar.count()}

    # ---- reload and stop
    def reload(self) -> dict:
        """Re-read the settings file and apply what can change while running."""
        new = settings_mod.load(self.settings.path)
        if self.workers is not None:  # this worker's share of ports, sockets and spool
            new = self.workers.settings_for(new)
            if self.workers.primary:
                self.workers.reload_others()
        old = self.settings
        changed = []
        # certificates first: a broken file refuses the whole reload (the old ones stay)
        if self.transports.reload_tls(new):
            changed.append("tls")
        if new.sip.listen != old.sip.listen:
            log.warning("reload: sip.listen changed; the listeners change at the next restart")
        for key in ("path", "backend", "dsn", "redis", "node"):
            if getattr(new.store, key) != getattr(old.store, key):
                log.warning("reload: store.%s changed; takes effect at the next restart", key)
        sip = new.sip
        self.transactions.set_timers(sip.t1_ms / 1000, sip.t2_ms / 1000, sip.t4_ms / 1000)
        self.registrar.configure(new)
        self.keepalive.configure(new)
        self.security.configure(new)
        self.toll.configure(new)
        self.calls.configure(new)
        self.conferences.configure(new)
        self.mail.configure(new.smtp)
        if self.admin is not None:
            self.admin.configure(new)
        if getattr(self, "web", None) is not None:
            self.web.configure(new)
            if new.http.listen != old.http.listen:
                log.warning("reload: http.listen changed; the listeners change at the next restart")
        if new.hep != old.hep:
            log.warning("reload: [hep] changed; mirroring changes at the next restart")
        self.settings = new
        self.auth.configure(self.realm(), sip.nonce_ttl, sip.digest_algorithms)
        self.transports.settings = new
        logging.getLogger().setLevel(new.log_level.upper())
        for section in ("sip", "rtp", "admin", "store", "smtp", "security"):
            if getattr(new, section) != getattr(old, section):
                changed.append(section)
        if new.log_level != old.log_level:
            changed.append("log")
        log.info("settings reloaded from %s (changed: %s); %d bindings kept", new.path,
                 ", ".join(changed) or "nothing", self.registrar.count())
        return {"changed": changed, "bindings": self.registrar.count()}

    def reload_tls(self) -> dict:
        """Read the certificate files again (same settings): new TLS connections get them,
        established ones keep theirs. ConfigError (old certificates kept) for a broken file."""
        done = self.transports.reload_tls(self.settings)
        log.info("tls: certificates %s", "reloaded" if done else "not used (no tls: listener)")
        return {"reloaded": done}

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        while self._stop_order:
            step = self._stop_order.pop()
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("error while stopping %r", step)
        log.info("hpbx stopped")


def keep_heap() -> None:
    """glibc hands the top of the heap back to the OS once 128 KiB of it are free, and a busy
    server then faults the same pages in again for the next burst of messages (2 % of the CPU
    at 20,000 REGISTER/s). Keep up to 256 MiB (M_TRIM_THRESHOLD) and grow in 16 MiB steps
    (M_TOP_PAD)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 256 << 20)
        libc.mallopt(-2, 16 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def raise_nofile() -> None:
    """A forked call holds 8 relay sockets: take the hard limit of open files, not the soft
    one (often 1,024 under systemd, or 20,000: 2,500 calls)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def run(settings: settings_mod.Settings) -> int:
    setup_logging(settings.log_level)
    keep_heap()
    raise_nofile()
    from hpbx.cluster.workers import Workers
    workers = Workers.for_process(settings)  # [server] workers > 1: this process's place
    if workers is not None:
        settings = workers.settings_for(settings)
        if workers.primary:
            workers.spawn_early(settings)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = Server(settings)
    server.workers = workers

    def on_hup():
        try:
            server.reload()
        except ConfigError as exc:
            log.error("reload refused, old settings kept: %s", exc)

    # Start-up builds millions of long-lived objects (users, bindings) and no garbage cycles: a
    # collection every 700 allocations would walk them again and again (1M users and bindings:
    # 32 s to answering with the collector on, 13 s without). It is frozen below anyway.
    gc.disable()
    try:
        loop.run_until_complete(server.start())
    except ConfigError:
        loop.run_until_complete(server.stop())
        raise
    except OSError as exc:
        log.error("cannot start: %s", exc)
        loop.run_until_complete(server.stop())
        return 1
    # What exists after start-up (code, the provisioned directory) lives as long as the process:
    # keep it out of every collection. Per-message objects die by reference counting (the
    # transactions break their timer cycles themselves), so young collections can be rarer.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    gc.enable()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    loop.add_signal_handler(signal.SIGINT, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        loop.run_until_complete(server.wait())
    finally:
        loop.run_until_complete(server.stop())
        loop.close()
    return 0
