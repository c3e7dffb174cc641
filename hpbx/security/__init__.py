"""Bans, rate limits and toll-fraud policy, fed by the compiled receive path (hpbx._fast.guard)."""
