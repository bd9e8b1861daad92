"""The build step pyproject.toml cannot declare: the Cython extensions.

``ext/*.pyx`` compile to ``optiserve.<name>``; set ``OPTISERVE_BUILD_EXTENSIONS=0`` to skip
them (the pure-Python twins are then used at run time). The protobuf/gRPC code is not
generated here: it lives in the client distribution (``optiserve_client.v1``, built by
clients/python/setup.py), which the server imports, so one process holds one copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, find_packages, setup

ROOT = Path(__file__).resolve().parent


def extensions() -> list[Extension]:
    """The Cython extensions, unless OPTISERVE_BUILD_EXTENSIONS=0."""
    if os.environ.get("OPTISERVE_BUILD_EXTENSIONS", "1") == "0":
        return []
    from Cython.Build import cythonize

    modules = [
        Extension(f"optiserve.{pyx.stem}", [str(pyx.relative_to(ROOT))])
        for pyx in sorted((ROOT / "ext").glob("*.pyx"))
    ]
    return list(
        cythonize(
            modules,
            language_level=3,
            compiler_directives={
                "boundscheck": False,
                "wraparound": False,
                "initializedcheck": False,
                "cdivision": True,
                "embedsignature": True,
            },
        )
    )


os.chdir(ROOT)
setup(
    packages=find_packages("server", include=["optiserve*"]),
    ext_modules=extensions(),
)
