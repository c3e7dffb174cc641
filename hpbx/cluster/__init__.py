"""Several hpbx nodes over shared engines: PostgreSQL (provisioning, CDRs) and Redis
(registrations, node presence, live calls). ``ownership``: which node holds which call, and
who ends the calls of a node that died."""
