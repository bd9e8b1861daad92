"""House rules that keep the package's layers honest."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

import optiserve

PACKAGE = Path(optiserve.__file__).parent
ROOT = PACKAGE.parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_below_rpc_imports_grpc() -> None:
    offenders = []
    for layer in ("engine", "cache", "backends", "routing", "quantize", "bench"):
        for path in (PACKAGE / layer).rglob("*.py"):
            bad = {n for n in _imports(path) if n == "grpc" or n.startswith(("grpc.", "grpc_"))}
            bad |= {n for n in _imports(path) if n.startswith(("optiserve.v1", "optiserve.rpc"))}
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(bad)}")
    assert not offenders, offenders


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """The generated modules match what protoc makes from proto/ now."""
    from grpc_tools import protoc

    proto_root = ROOT / "proto"
    protos = [str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto")]
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *protos,
    ]
    assert protoc.main(args) == 0
    fresh = sorted(tmp_path.rglob("*_pb2*.py*"))
    assert fresh
    stale = [
        str(f.relative_to(tmp_path))
        for f in fresh
        if not filecmp.cmp(f, PACKAGE.parent / f.relative_to(tmp_path), shallow=False)
    ]
    assert not stale, f"generated code is stale, reinstall (pip install -e .): {stale}"


def test_config_is_not_read_at_import() -> None:
    code = (
        "import os; os.environ['OPTISERVE_SERVER__PORT'] = 'not-a-number'; "
        "import optiserve.config, optiserve.rpc.server, optiserve.engine.pipeline; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
