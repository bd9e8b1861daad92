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
    """The client's generated modules (the only copy: the server imports them) match what
    its build step makes from proto/ now."""
    import importlib.util

    import optiserve_client

    spec = importlib.util.spec_from_file_location(
        "optiserve_client_setup", ROOT / "clients" / "python" / "setup.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # defines generate(); setup() runs only as a script
    fresh = build.generate(tmp_path)
    assert {f.name for f in fresh} >= {"optiserve_pb2.py", "optiserve_pb2.pyi"}
    installed = Path(optiserve_client.__file__).parent
    stale = [
        str(f.relative_to(tmp_path))
        for f in fresh
        if not filecmp.cmp(f, installed.parent / f.relative_to(tmp_path), shallow=False)
    ]
    assert not stale, f"generated code is stale, reinstall (pip install -e clients/python): {stale}"


def test_the_server_has_no_generated_copy() -> None:
    """protobuf refuses the optiserve.v1 names twice in one process: the server imports the
    client's stubs and generates none of its own."""
    from optiserve.rpc import convert
    from optiserve_client.v1 import optiserve_pb2

    assert convert.pb is optiserve_pb2


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
    shutil.copytree(PACKAGE, copy / "optiserve", ignore=shutil.ignore_patterns("*.so"))
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
