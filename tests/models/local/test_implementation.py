"""Which token-batching core serves, and that the pure-Python twin generates the same tokens.

The suite fails when the Cython extension was not built (the server would silently run the
slow twin), unless ``OPTISERVE_NO_EXTENSIONS=1`` asks for the twin on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_lm import TinyLM, twin_workload

from optiserve import batching

HERE = Path(__file__).resolve().parent

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from optiserve import batching
from tiny_lm import TinyLM, twin_workload
tokens = twin_workload(TinyLM(Path(sys.argv[2])))
print(json.dumps({"implementation": batching.IMPLEMENTATION, "tokens": tokens}))
"""


def test_the_extension_is_built_unless_disabled() -> None:
    if batching.extensions_disabled():
        assert batching.IMPLEMENTATION == "python"
        return
    try:
        from optiserve import _batching  # noqa: F401

        why = ""
    except ImportError as exc:
        why = f" ({exc})"
    assert batching.IMPLEMENTATION == "cython", (
        f"the Cython core optiserve._batching is not built{why}, so the server would run the "
        "slow pure-Python twin. Build it with `.venv/bin/pip install -e '.[dev]'` (needs Cython "
        "and a C compiler), or set OPTISERVE_NO_EXTENSIONS=1 to test the twin on purpose."
    )


def test_extensions_disabled_reads_the_variable() -> None:
    for value, disabled in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False)):
        assert batching.extensions_disabled({"OPTISERVE_NO_EXTENSIONS": value}) is disabled
    assert not batching.extensions_disabled({})


def test_pure_python_twin_generates_the_same_tokens(tiny_llama: TinyLM) -> None:
    env = {
        **os.environ,
        "OPTISERVE_NO_EXTENSIONS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(HERE), str(tiny_llama.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    twin = json.loads(done.stdout.strip().splitlines()[-1])
    assert twin["implementation"] == "python"
    here = twin_workload(tiny_llama)
    assert {int(k): v for k, v in twin["tokens"].items()} == here
    assert sum(len(v) for v in here.values()) > 20  # a real workload, not a trivial one
