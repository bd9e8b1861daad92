"""Build steps pyproject.toml cannot declare: the Cython extensions and the protobuf code.

* The gRPC/protobuf modules (with ``.pyi`` stubs) are generated from ``proto/`` into
  ``server/optiserve/v1/`` every time the package is built, so they are never stale and
  never edited by hand (they are git-ignored).
* ``ext/*.pyx`` compile to ``optiserve.<name>``; set ``OPTISERVE_BUILD_EXTENSIONS=0`` to
  skip them (the pure-Python twins are then used at run time).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, find_packages, setup

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "server"


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over every .proto under proto/."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(protos))


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
generate_protos()
setup(
    packages=[*find_packages("server", include=["optiserve*"]), "optiserve_client"],
    ext_modules=extensions(),
)
