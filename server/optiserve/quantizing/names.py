"""A variant's name and its directory under the models directory."""

from __future__ import annotations

import re
from pathlib import Path

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.validation import shown

#: What a variant name may be: it names a directory and a model.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_variant_name(model: str, method: str, bits: int) -> str:
    """``<model>-<method>[-<bits>]``, with characters a name may not hold replaced."""
    name = f"{model}-{method}" + (f"-{bits}" if bits else "")
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:128] or "variant"


def variant_dir(models_dir: Path, name: str) -> Path:
    """The directory of variant ``name``: a direct child of ``models_dir``.

    InvalidRequest for a name that is not a plain directory name (a path separator,
    ``..``, a leading dot, anything outside ``[A-Za-z0-9._-]``): the output must never
    escape the models directory.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"variant_name {shown(name)} is not allowed: use 1-128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit, without '..' (it names a directory "
            "inside the server's models directory)"
        )
    root = models_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:  # belt and braces: a symlinked name, say
        raise InvalidRequest(f"variant_name {name!r} resolves outside the models directory")
    return path
