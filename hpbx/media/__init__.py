"""Media: the relay command set (engine), later players, recorders and conferences."""
from hpbx.media.engine import MediaEngine, MediaSession

__all__ = ["MediaEngine", "MediaSession"]
