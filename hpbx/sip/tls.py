"""TLS contexts of the SIP transport, built from the settings and checked before use.

Server side: the minimum version (``[security] tls_min_version``, TLS 1.2 by default), AEAD
suites with forward secrecy (``tls_ciphers``), the certificate ``[sip] tls_cert``/``tls_key``,
and per-domain certificates (``[security] tls_certs``) picked by SNI. Client side (our
connections, to trunks): the same versions and suites, and the peer's certificate checked
against the CAs (``tls_ca_file`` or the system's) and the host name or address dialled, unless
``tls_verify_peers`` is false.

``server_context(settings)`` raises ``ConfigError`` naming the file when a certificate or key
cannot be loaded, so a reload with a broken file is refused and the old context stays.
"""
from __future__ import annotations

import ssl

from hpbx.errors import ConfigError

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _harden(ctx: ssl.SSLContext, sec) -> None:
    ctx.minimum_version = _VERSIONS[sec.tls_min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.set_ciphers(sec.tls_ciphers)
    except ssl.SSLError as exc:
        raise ConfigError(f"security.tls_ciphers: no usable cipher in {sec.tls_ciphers!r} ({exc})") from None


def _load(ctx: ssl.SSLContext, cert: str, key: str, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load certificate {cert}"
                          + (f" with key {key}" if key else "") + f": {exc}") from None


def server_context(settings) -> ssl.SSLContext:
    sip, sec = settings.sip, settings.security
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, sec)
    _load(ctx, sip.tls_cert, sip.tls_key, "sip.tls_cert")
    by_domain = {}
    for item in sec.tls_certs:
        sub = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(sub, sec)
        _load(sub, item.cert, item.key, f"security.tls_certs[{item.domain}]")
        by_domain[item.domain] = sub
    if by_domain:
        def pick(sslobj, name, _ctx):
            sub = by_domain.get((name or "").lower().rstrip("."))
            if sub is not None:
                sslobj.context = sub
            return None

        ctx.sni_callback = pick
    return ctx


def client_context(settings) -> ssl.SSLContext:
    sec = settings.security
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, sec)
    if sec.tls_verify_peers:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if sec.tls_ca_file:
            try:
                ctx.load_verify_locations(sec.tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"security.tls_ca_file: cannot load {sec.tls_ca_file}: {exc}") from None
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
