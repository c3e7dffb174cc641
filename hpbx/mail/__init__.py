"""Outgoing mail that is never lost: the spool (``hpbx.mail.spool``) and the messages hpbx
writes (voicemail, recordings, bounces).

Other services send mail through one call::

    from hpbx.mail.spool import Attachment
    mail_id = server.mail.submit(to=["anna@example.com"], subject="Fax from 0441234567",
                                 body="...", attachments=[Attachment("fax.pdf", "application/pdf", data)],
                                 tenant="acme", kind="fax")

``submit`` returns once the message is on disk (fsync'd); delivery, retries and bounces are
the spool's business from then on.
"""


def valid_address(addr: str) -> bool:
    """A plain ``local@domain.tld`` (no display name, no list, no spaces)."""
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain and "." in domain and not any(c.isspace() for c in addr)
                and not any(c in addr for c in "<>,;\"()"))
