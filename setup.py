"""Build knobs for the compiled hot paths, in one place.

Every ``hpbx/_fast/*.pyx`` becomes an extension ``hpbx._fast.<name>``.
``HPBX_DEBUG=1`` builds with line tracing and writes annotated HTML next to the sources.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("HPBX_DEBUG") == "1"

DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    "binding": False,
    "cdivision": True,
}
if DEBUG:
    DIRECTIVES.update(linetrace=True, profile=True)

COMPILE_ARGS = ["-O2", "-fno-strict-aliasing", "-Wno-unused-function"]
if DEBUG:
    COMPILE_ARGS = ["-O0", "-g"]

# Extensions that need extra native libraries or macros.
EXTRA = {
    "relay": {"libraries": ["pthread", "m"], "define_macros": [("_GNU_SOURCE", "1")]},
    "udpio": {"libraries": ["pthread"], "define_macros": [("_GNU_SOURCE", "1")]},
}


# G.722 in the media engine comes from spandsp (Debian libspandsp-dev) when it is installed.
if os.path.exists("/usr/include/spandsp/g722.h"):
    EXTRA["relay"]["libraries"].append("spandsp")
    EXTRA["relay"]["define_macros"].append(("HPBX_G722", "1"))
    # the fax endpoint (media_fax.h): spandsp's T.30 / T.38 terminal (issue 15)
    EXTRA["relay"]["define_macros"].append(("HPBX_FAX", "1"))

# HPBX_ONLY=sipmsg,sdp limits a development build to some modules.
ONLY = {n for n in os.environ.get("HPBX_ONLY", "").split(",") if n}


def extensions():
    exts = []
    for pyx in sorted(glob.glob("hpbx/_fast/*.pyx")):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if ONLY and name not in ONLY:
            continue
        extra = EXTRA.get(name, {})
        macros = list(extra.get("define_macros", []))
        if DEBUG:
            macros.append(("CYTHON_TRACE_NOGIL", "1"))
        exts.append(
            Extension(
                f"hpbx._fast.{name}",
                [pyx],
                extra_compile_args=COMPILE_ARGS,
                libraries=extra.get("libraries", []),
                define_macros=macros,
                # the C cores the .pyx include: a change to one rebuilds (setuptools compares times)
                depends=sorted(glob.glob("hpbx/_fast/*.h")),
            )
        )
    return cythonize(exts, compiler_directives=DIRECTIVES, annotate=DEBUG, nthreads=2)


setup(ext_modules=extensions())
