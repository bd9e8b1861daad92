"""Measure a variant as reloaded from disk in a fresh process.

``python -m optiserve.models.local.quantize.fresh_process --source S --variant V
[--eval-file F] [--prompts-file P] [--new-tokens N] [--rounds R]`` runs
:func:`~optiserve.models.local.quantize.measure.measure` with one torch thread, writes one
JSON line per progress step on stderr (``{"progress": {...}}``) and one JSON line on stdout
at the end: ``{"measurement": {...}}``, or ``{"error": {"type": ..., "message": ...}}``
(exit status 2) when it refused or failed on purpose. :func:`measure_in_fresh_process`
runs it, forwards the progress, and kills it when the job is cancelled.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from optiserve.domain import errors
from optiserve.models.local.quantize.base import Cancelled, Progress, ProgressFn
from optiserve.models.local.quantize.measure import Measurement, MeasureOptions

MODULE = "optiserve.models.local.quantize.fresh_process"
#: Lines of the child's stderr quoted when it fails.
_TAIL_LINES = 20


def measure_in_fresh_process(
    source_dir: Path | str,
    variant_dir: Path | str,
    eval_text: str = "",
    prompts: tuple[str, ...] = (),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: MeasureOptions | None = None,
    timeout_s: float | None = None,
) -> Measurement:
    """:func:`measure` run in a new Python process (the variant reloaded from disk).

    Raises :class:`Cancelled` (the child killed) when ``cancel`` is set, the domain error
    the child raised on purpose (e.g. InvalidRequest for a too-short text), and
    :class:`~optiserve.domain.errors.Internal` with the child's last stderr lines when it
    crashes or runs past ``timeout_s``.
    """
    cancel = cancel or threading.Event()
    with tempfile.TemporaryDirectory(prefix="optiserve-measure-") as tmp:
        eval_file = Path(tmp) / "eval.txt"
        eval_file.write_text(eval_text)
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(list(prompts)))
        argv = [
            sys.executable,
            "-m",
            MODULE,
            "--source",
            str(source_dir),
            "--variant",
            str(variant_dir),
            "--eval-file",
            str(eval_file),
            "--prompts-file",
            str(prompts_file),
            "--options",
            json.dumps(asdict(options or MeasureOptions())),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        reader = threading.Thread(
            target=_forward_progress, args=(proc.stderr, progress, tail), daemon=True
        )
        reader.start()
        out_lines: list[str] = []
        out_reader = threading.Thread(
            target=lambda: out_lines.extend(proc.stdout or ()), daemon=True
        )
        out_reader.start()
        waited = 0.0
        while proc.poll() is None:
            if cancel.wait(0.05):
                proc.kill()
                proc.wait()
                raise Cancelled("the measurement was cancelled")
            waited += 0.05
            if timeout_s is not None and waited > timeout_s:
                proc.kill()
                proc.wait()
                raise errors.Internal(
                    f"measuring {variant_dir} took over {timeout_s:.0f} s; last output: "
                    + " | ".join(tail)
                )
        reader.join(5)
        out_reader.join(5)
    return _result(proc.returncode, out_lines, tail, variant_dir)


def _forward_progress(
    stream: IO[str] | None, progress: ProgressFn | None, tail: collections.deque[str]
) -> None:
    for line in stream or ():
        try:
            data = json.loads(line)
            item = data["progress"]
        except (ValueError, KeyError, TypeError):
            tail.append(line.rstrip())
            continue
        if progress is not None:
            progress(Progress(**item))


def _result(
    returncode: int, out_lines: list[str], tail: collections.deque[str], variant: Path | str
) -> Measurement:
    last: dict[str, Any] = {}
    for line in reversed(out_lines):
        try:
            last = json.loads(line)
            break
        except ValueError:
            continue
    if returncode == 0 and "measurement" in last:
        return Measurement.from_dict(last["measurement"])
    error = last.get("error") if isinstance(last.get("error"), dict) else None
    if error is not None:
        cls = getattr(errors, str(error.get("type")), None)
        if isinstance(cls, type) and issubclass(cls, errors.OptiserveError):
            raise cls(str(error.get("message")))
    raise errors.Internal(
        f"measuring {variant} in a fresh process failed (exit status {returncode}); "
        "its last lines: " + (" | ".join(tail) or "(none)")
    )


def main(argv: list[str] | None = None) -> int:
    """The child: measure, print one JSON line; 2 on a refusal or failure."""
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__)
    parser.add_argument("--source", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--eval-file", default="")
    parser.add_argument("--prompts-file", default="")
    parser.add_argument("--options", default="{}", help="MeasureOptions as JSON")
    args = parser.parse_args(argv)

    import torch

    from optiserve.models.local.quantize.measure import measure

    torch.set_num_threads(1)
    eval_text = Path(args.eval_file).read_text() if args.eval_file else ""
    prompts = tuple(json.loads(Path(args.prompts_file).read_text())) if args.prompts_file else ()

    def report(p: Progress) -> None:
        print(json.dumps({"progress": asdict(p)}), file=sys.stderr, flush=True)

    try:
        result = measure(
            args.source,
            args.variant,
            eval_text,
            prompts,
            report,
            options=MeasureOptions(**json.loads(args.options)),
        )
    except errors.OptiserveError as exc:
        print(json.dumps({"error": {"type": type(exc).__name__, "message": exc.message}}))
        return 2
    print(json.dumps({"measurement": result.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
