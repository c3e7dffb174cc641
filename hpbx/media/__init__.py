"""Media: the relay command set and media endpoints (play, record, digits, tones, rooms)."""
from hpbx.media.engine import TONES, MediaEngine, MediaEvent, MediaSession

__all__ = ["TONES", "MediaEngine", "MediaEvent", "MediaSession"]
