"""The one build step pyproject.toml cannot declare: the protobuf and gRPC code.

``optiserve_client/v1/optiserve_pb2.py`` (with its ``.pyi`` stub) and
``optiserve_pb2_grpc.py`` are generated from the repository's ``proto/optiserve/v1/``
every time the distribution is built, so they are never stale and never edited by hand
(they are git-ignored). They are the only copy of the optiserve.v1 messages: the server
imports them from here, because protobuf refuses the same message names twice in one
process.

protoc names the Python module after the path of the .proto file, so each file is
compiled from a copy placed at ``optiserve_client/v1/`` in a temporary directory; the
message names (package ``optiserve.v1``) and so the wire format stay those of proto/.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto" / "optiserve" / "v1"
PACKAGE = "optiserve_client/v1"


def generate(out: Path = HERE) -> list[Path]:
    """Run protoc (from grpcio-tools) over proto/optiserve/v1/*.proto; write the modules
    under ``out/optiserve_client/v1/`` and return their paths."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}: build from a checkout of the repo")
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / PACKAGE).mkdir(parents=True)
        for proto in protos:
            shutil.copyfile(proto, Path(tmp) / PACKAGE / proto.name)
        names = [f"{PACKAGE}/{proto.name}" for proto in protos]
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *names,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + ", ".join(names))
    return sorted((out / PACKAGE).glob("*_pb2*.py*"))


if __name__ == "__main__":
    from setuptools import setup

    # An sdist has no proto/ beside it; it carries the modules generated when it was made.
    if PROTO_DIR.is_dir() or not (HERE / PACKAGE / "optiserve_pb2.py").exists():
        generate()
    setup()
