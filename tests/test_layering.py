"""House rules that keep the package honest (the layer order itself is import-linter's job:
``lint-imports`` runs in ``make test`` with the contracts in pyproject.toml)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import optiserve

PACKAGE = Path(optiserve.__file__).parent
ROOT = PACKAGE.parent.parent


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
        "import optiserve.config, optiserve.app, optiserve.service; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_an_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the package where the domain imports the service
    is refused by lint-imports."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "optiserve", ignore=shutil.ignore_patterns("*.so", "v1"))
    (copy / "optiserve" / "v1").mkdir()
    (copy / "optiserve" / "v1" / "__init__.py").write_text("")
    bad = copy / "optiserve" / "domain" / "types.py"
    bad.write_text(bad.read_text() + "\nimport optiserve.service  # upward\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).parent / "lint-imports"
    env = {"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run(
        [str(lint), "--config", str(tmp_path / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode != 0, out.stdout
    assert "optiserve.domain.types -> optiserve.service" in out.stdout
