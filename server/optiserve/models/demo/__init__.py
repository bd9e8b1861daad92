"""The demo model shipped with the package: ``source = "demo"`` loads this directory.

Package data beside this module: ``config.json``, ``generation_config.json``,
``model.safetensors`` (float16) and the tokenizer files, loaded with ``from_pretrained``
like any other model directory. They are built, not trained at start:
``python -m optiserve.tools.build_demo_model`` (its docstring and the README record the
command, the seed, the steps and the measured training time).
"""

from __future__ import annotations

from pathlib import Path

#: Files that must be present for the directory to load.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def demo_model_dir() -> Path:
    """The directory of the shipped demo model.

    Raises FileNotFoundError, saying how to rebuild it, when the files are missing (an
    installation without package data).
    """
    path = Path(__file__).resolve().parent
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the demo model's files {missing} are missing from {path}; reinstall optiserve "
            "or rebuild them with `python -m optiserve.tools.build_demo_model`"
        )
    return path
