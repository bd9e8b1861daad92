"""Property tests of the token-batching core, run against the extension and its twin."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optiserve import _batching_py

try:
    from optiserve import _batching as _batching_ext
except ImportError:  # pragma: no cover - a build without extensions tests the twin only
    _batching_ext = None

IMPLS = [pytest.param(_batching_py, id="python")]
if _batching_ext is not None:
    IMPLS.append(pytest.param(_batching_ext, id="cython"))

INT64_MAX = 2**63 - 1
token = st.integers(min_value=0, max_value=INT64_MAX)
token_lists = st.lists(st.lists(token, max_size=40), max_size=12)


def _i64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1)


def _reference_collate(seqs: list[list[int]], pad: int) -> tuple:
    width = max([len(s) for s in seqs] + [0])
    ids, mask, pos = [], [], []
    for s in seqs:
        fill = width - len(s)
        ids.append([pad] * fill + s)
        mask.append([0] * fill + [1] * len(s))
        pos.append([0] * fill + list(range(len(s))))
    return ids, mask, pos


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None)
@given(
    seqs=token_lists,
    pad=st.integers(min_value=0, max_value=INT64_MAX),
    kind=st.sampled_from(["list", "tuple", "array"]),
)
def test_collate_matches_reference(
    impl: ModuleType, seqs: list[list[int]], pad: int, kind: str
) -> None:
    rows = {"list": seqs, "tuple": [tuple(s) for s in seqs], "array": [_i64(s) for s in seqs]}
    ids, mask, pos = impl.collate(rows[kind], pad)
    want = _reference_collate(seqs, pad)
    width = max([len(s) for s in seqs] + [0])
    for got, expected in zip((ids, mask, pos), want, strict=True):
        assert got.dtype == np.int64
        assert got.shape == (len(seqs), width)
        assert got.tolist() == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_collate_empty_single_and_maximum(impl: ModuleType) -> None:
    ids, mask, pos = impl.collate([], 0)
    assert ids.shape == mask.shape == pos.shape == (0, 0)
    ids, mask, pos = impl.collate([[], [4]], 7)
    assert ids.tolist() == [[7], [4]]
    assert mask.tolist() == [[0], [1]]
    ids, _, _ = impl.collate([[INT64_MAX]], 0)
    assert ids.tolist() == [[INT64_MAX]]
    long_row = list(range(5000))
    ids, mask, pos = impl.collate([long_row, [1]], 0)
    assert ids.shape == (2, 5000)
    assert pos[0, -1] == 4999
    assert mask[1].sum() == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_collate_rejects_out_of_range_tokens(impl: ModuleType) -> None:
    with pytest.raises(OverflowError):
        impl.collate([[2**64]], 0)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.integers(-50, 50), max_size=40, unique=True),
    keep=st.lists(st.integers(-60, 60), max_size=40),
)
def test_filter_indices(impl: ModuleType, rows: list[int], keep: list[int]) -> None:
    got = impl.filter_indices(_i64(rows), _i64(keep))
    assert got.dtype == np.int64
    assert got.tolist() == [i for i, r in enumerate(rows) if r in set(keep)]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 64)), max_size=10))
def test_concat_layout(impl: ModuleType, batches: list[tuple[int, int]]) -> None:
    widths = _i64([w for w, _ in batches])
    sizes = _i64([s for _, s in batches])
    starts, width = impl.concat_layout(widths, sizes)
    assert width == max([w for w, _ in batches] + [0])
    assert starts.tolist() == [sum(s for _, s in batches[:i]) for i in range(len(batches) + 1)]


@pytest.mark.parametrize("impl", IMPLS)
def test_concat_layout_rejects_mismatched_lengths(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="differ"):
        impl.concat_layout(_i64([1, 2]), _i64([1]))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 10), st.integers(0, 10)), max_size=40
    ),
    eos=st.lists(st.integers(0, 20), max_size=4),
)
def test_finish_codes(impl: ModuleType, rows: list[tuple[int, int, int]], eos: list[int]) -> None:
    got = impl.finish_codes(
        _i64([t for t, _, _ in rows]),
        _i64([g for _, g, _ in rows]),
        _i64([m for _, _, m in rows]),
        _i64(eos),
    )
    assert got.dtype == np.int8
    assert got.tolist() == [1 if t in eos else 2 if g >= m else 0 for t, g, m in rows]


@st.composite
def stop_problem(draw: st.DrawFn) -> tuple:
    n_rows = draw(st.integers(0, 8))
    width = draw(st.integers(0, 6))
    tails = [[draw(st.integers(0, 3)) for _ in range(width)] for _ in range(n_rows)]
    lens = [draw(st.integers(0, width + 2)) for _ in range(n_rows)]
    stops = draw(
        st.lists(
            st.tuples(st.integers(-1, n_rows), st.lists(st.integers(0, 3), max_size=4)), max_size=12
        )
    )
    return tails, width, lens, stops


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None)
@given(problem=stop_problem())
def test_match_stop_ids(impl: ModuleType, problem: tuple) -> None:
    tails, width, lens, stops = problem
    offsets = [0]
    for _, seq in stops:
        offsets.append(offsets[-1] + len(seq))
    got = impl.match_stop_ids(
        np.array(tails, dtype=np.int64).reshape(len(tails), width),
        _i64(lens),
        _i64([t for _, seq in stops for t in seq]),
        _i64(offsets),
        _i64([r for r, _ in stops]),
    )
    want = []
    for r, tail in enumerate(tails):
        valid = tail[width - min(lens[r], width) :] if min(lens[r], width) else []
        hit = -1
        for s, (row, seq) in enumerate(stops):
            if (
                row == r
                and seq
                and len(seq) <= len(valid)
                and valid[len(valid) - len(seq) :] == seq
            ):
                hit = s
                break
        want.append(hit)
    assert got.tolist() == want


@pytest.mark.parametrize("impl", IMPLS)
def test_match_stop_ids_validates_shapes(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="one more entry"):
        impl.match_stop_ids(np.zeros((1, 1), np.int64), _i64([1]), _i64([]), _i64([]), _i64([0]))


def test_selector_exposes_the_selected_implementation() -> None:
    from optiserve import batching

    chosen = _batching_py if batching.IMPLEMENTATION == "python" else _batching_ext
    assert chosen is not None
    names = [n for n in batching.__all__ if n not in ("IMPLEMENTATION", "extensions_disabled")]
    twin_functions = [
        name
        for name, value in vars(_batching_py).items()
        if callable(value) and getattr(value, "__module__", "") == _batching_py.__name__
    ]
    assert sorted(names) == sorted(twin_functions)  # every core function is selected
    for name in names:
        assert getattr(batching, name) is getattr(chosen, name), name


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(data=st.data(), n_rows=st.integers(min_value=0, max_value=64))
def test_compact_plan_refills_holes_with_the_last_rows(
    impl: ModuleType, data: st.DataObject, n_rows: int
) -> None:
    keep = sorted(data.draw(st.sets(st.integers(0, max(n_rows - 1, 0)), max_size=n_rows)))
    keep = [k for k in keep if k < n_rows]
    order, dst, src = impl.compact_plan(_i64(keep), n_rows)
    assert order.dtype == dst.dtype == src.dtype == np.int64
    # Every kept row ends in exactly one of the first len(keep) slots ...
    assert sorted(order.tolist()) == keep
    # ... rows already there stay put, and only rows past the end move, into holes.
    n_keep = len(keep)
    assert all(order[i] == i for i in range(n_keep) if i in keep)
    assert dst.tolist() == [i for i in range(n_keep) if i not in keep]
    assert src.tolist() == [k for k in keep if k >= n_keep]
    assert [int(order[d]) for d in dst] == src.tolist()


@pytest.mark.parametrize("impl", IMPLS)
def test_compact_plan_edges_and_errors(impl: ModuleType) -> None:
    order, dst, src = impl.compact_plan(_i64([]), 0)
    assert order.tolist() == dst.tolist() == src.tolist() == []
    order, dst, src = impl.compact_plan(_i64([4]), 5)
    assert (order.tolist(), dst.tolist(), src.tolist()) == ([4], [0], [4])
    order, dst, _ = impl.compact_plan(_i64(list(range(32))), 32)
    assert order.tolist() == list(range(32)) and dst.tolist() == []
    for bad, n in (([2, 1], 3), ([0, 0], 3), ([3], 3), ([-1], 3)):
        with pytest.raises(ValueError, match="unique positions"):
            impl.compact_plan(_i64(bad), n)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), width=st.integers(min_value=0, max_value=80))
def test_align_index_left_aligns_rows(impl: ModuleType, data: st.DataObject, width: int) -> None:
    lengths = data.draw(st.lists(st.integers(0, width), max_size=16))
    index = impl.align_index(_i64(lengths), width)
    assert index.dtype == np.int64
    assert index.shape == (len(lengths), width)
    for r, n in enumerate(lengths):
        row = list(range(width - n)) + [f"t{j}" for j in range(n)]  # left-padded row
        assert [row[i] for i in index[r]][:n] == [f"t{j}" for j in range(n)]
        assert sorted(index[r].tolist()) == list(range(width))  # a permutation


@pytest.mark.parametrize("impl", IMPLS)
def test_align_index_errors(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="outside"):
        impl.align_index(_i64([4]), 3)
    assert impl.align_index(_i64([]), 5).shape == (0, 5)
