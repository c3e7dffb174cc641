"""Compiled hot paths (Cython). Nothing here imports from hpbx except hpbx.errors."""
