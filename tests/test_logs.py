"""Structured logs: JSON lines, and third-party noise kept out of them."""

from __future__ import annotations

import json
import logging
import os

from optiserve.logs import JsonFormatter, _LibraryNoise


def record(pathname: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 1, "note %s", ("x",), None)


def test_quantizer_notes_are_dropped_and_everything_else_passes() -> None:
    noise = os.path.join("site-packages", "onnxruntime", "quantization", "onnx_quantizer.py")
    keep = _LibraryNoise()
    assert not keep.filter(record(noise))
    assert not keep.filter(record(noise, logging.WARNING))
    assert keep.filter(record(noise, logging.ERROR))
    assert keep.filter(record(os.path.join("optiserve", "cache", "embedder.py")))


def test_json_line_carries_extra_fields() -> None:
    rec = record("x.py")
    rec.model = "demo-llama"
    line = json.loads(JsonFormatter().format(rec))
    assert line["msg"] == "note x" and line["model"] == "demo-llama" and line["level"] == "info"
