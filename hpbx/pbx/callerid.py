"""Which caller ID a user presents to the network (a trunk), FEATURES 4.8.10/4.8.19 and issue 18.

An internal number means nothing outside the PBX, and a carrier rejects or rewrites it, so it is
never presented there: a user with a displayed number presents it; one without presents the
tenant's default public number, or nothing (``withheld``: From anonymous, and the default number,
if any, only in P-Asserted-Identity with ``Privacy: id``, RFC 3325 §9.3 / RFC 3323 §4.2), as the
tenant's ``caller_id_fallback`` chooses. A default number that is not set is withheld too.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpbx.pbx.model import Tenant, User

ANONYMOUS_FROM = ("Anonymous", "anonymous", "anonymous.invalid")  # RFC 3323 §4.1.1.3


@dataclass(frozen=True, slots=True)
class NetworkIdentity:
    from_user: str  # user part of From ("anonymous" when withheld)
    asserted: str  # number for P-Asserted-Identity; "" = none
    withheld: bool  # Privacy: id, and From anonymous


def network_identity(tenant: Tenant | None, user: User) -> NetworkIdentity:
    if user.displayed_number:
        return NetworkIdentity(user.displayed_number, user.displayed_number, False)
    default = tenant.default_number if tenant is not None else ""
    if default and tenant.caller_id_fallback == "default_number":
        return NetworkIdentity(default, default, False)
    return NetworkIdentity(ANONYMOUS_FROM[1], default, True)
