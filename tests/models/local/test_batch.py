"""The batch contract: from_requests, prefill, decode, filter, concatenate."""

from __future__ import annotations

import pytest
import torch
from tiny_lm import TinyLM, random_requests, run_waves

from optiserve.domain.types import FinishReason, SamplingParams
from optiserve.models.local.batch import CausalLMBatch, SequenceRequest, eos_token_ids
from optiserve.models.local.sampling import make_generator


def test_greedy_batched_equals_alone(tiny_lm: TinyLM) -> None:
    reqs = random_requests(32, seed=1)
    got = run_waves(tiny_lm, [reqs[:5], reqs[5:6], reqs[6:20], reqs[20:]])
    for r in reqs:
        assert got[r.seq_id] == tiny_lm.reference(r.prompt_ids, r.max_new_tokens), r.seq_id


def test_filter_refills_slots_and_trims_width(tiny_llama: TinyLM) -> None:
    reqs = [
        SequenceRequest(1, list(range(10, 60)), SamplingParams(max_new_tokens=5)),
        SequenceRequest(2, list(range(10, 15)), SamplingParams(max_new_tokens=5)),
        SequenceRequest(3, list(range(10, 20)), SamplingParams(max_new_tokens=5)),
    ]
    batch = CausalLMBatch.from_requests(reqs, tiny_llama.tokenizer.pad_token_id)
    assert batch.width == 50
    batch.prefill(tiny_llama.model)
    layer = batch.cache.layers[0]
    # Left-aligned slots: row 2 (5 tokens) holds its keys in columns 0..4.
    row3_keys = layer.kbuf[2, :, :10].clone()
    buffer = layer.kbuf.data_ptr()
    kept = batch.filter([3, 2, 99])
    assert kept is not None
    # Sequence 3 (the last row) moved into the freed slot 0; sequence 2 did not move.
    assert kept.seq_ids == [3, 2]
    assert kept.width == 10
    assert kept.attention_mask.tolist()[1] == [1] * 5 + [0] * 5
    assert kept.cache.layers[0].keys.shape[0] == 2
    assert kept.cache.layers[0].keys.shape[2] == 10
    assert torch.equal(layer.kbuf[0, :, :10], row3_keys)
    assert layer.kbuf.data_ptr() == buffer  # no re-allocation, no whole-cache copy
    assert kept.filter([]) is None


def test_concatenate_copies_only_the_joining_rows(tiny_llama: TinyLM) -> None:
    pad = tiny_llama.tokenizer.pad_token_id
    running = CausalLMBatch.from_requests(random_requests(6, seed=4), pad)
    running.prefill(tiny_llama.model)
    running.decode(tiny_llama.model)
    layer = running.cache.layers[0]
    before = layer.kbuf[:6, :, : running.width].clone()
    new = CausalLMBatch.from_requests(random_requests(2, seed=5, start_id=10), pad)
    new.prefill(tiny_llama.model)
    new_width = new.width
    merged = CausalLMBatch.concatenate([running, new])
    assert merged is running
    assert merged.seq_ids[6:] == [10, 11]
    assert len(new) == 0
    assert merged.width == max(before.shape[2], new_width)
    assert torch.equal(merged.cache.layers[0].kbuf[:6, :, : before.shape[2]], before)


def test_per_row_sampling_params_do_not_leak(tiny_llama: TinyLM) -> None:
    prompt = list(range(30, 60))
    greedy = SequenceRequest(1, prompt, SamplingParams(max_new_tokens=12))
    hot_params = SamplingParams(max_new_tokens=12, temperature=1.5, seed=7)
    hot = SequenceRequest(2, prompt, hot_params, make_generator(hot_params))
    got = run_waves(tiny_llama, [[greedy, hot]])
    assert got[1] == tiny_llama.reference(prompt, 12)
    assert len(got[2]) == 12


def test_seeded_sampling_is_reproducible_across_batches(tiny_llama: TinyLM) -> None:
    prompt = list(range(30, 50))
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.9, seed=3)

    def sampled(others: int) -> list[int]:
        req = SequenceRequest(0, prompt, params, make_generator(params))
        return run_waves(tiny_llama, [[req, *random_requests(others, seed=others, start_id=1)]])[0]

    assert sampled(0) == sampled(0)


def test_token_level_stop_and_eos(tiny_llama: TinyLM) -> None:
    prompt = list(range(100, 130))
    alone = tiny_llama.reference(prompt, 10)
    stop = tuple(alone[2:4])
    req = SequenceRequest(1, prompt, SamplingParams(max_new_tokens=10), stop_token_ids=(stop,))
    batch = CausalLMBatch.from_requests([req], tiny_llama.tokenizer.pad_token_id)
    finishes = [g.finish for g in batch.prefill(tiny_llama.model)]
    while finishes[-1] is None:
        finishes += [g.finish for g in batch.decode(tiny_llama.model)]
    assert finishes[-1] is FinishReason.STOP_SEQUENCE
    assert len(finishes) <= 4
    eos = SequenceRequest(2, prompt, SamplingParams(max_new_tokens=10))
    batch = CausalLMBatch.from_requests([eos], 0, eos_ids=[alone[0]])
    assert batch.prefill(tiny_llama.model)[0].finish is FinishReason.EOS


def test_contract_errors(tiny_llama: TinyLM) -> None:
    with pytest.raises(ValueError, match="at least one"):
        CausalLMBatch.from_requests([], 0)
    with pytest.raises(ValueError, match="empty prompt"):
        CausalLMBatch.from_requests([SequenceRequest(1, [], SamplingParams(1))], 0)
    with pytest.raises(ValueError, match="non-empty"):
        CausalLMBatch.concatenate([])
    batch = CausalLMBatch.from_requests([SequenceRequest(1, [5], SamplingParams(1))], 0)
    with pytest.raises(RuntimeError, match="before prefill"):
        batch.decode(tiny_llama.model)
    assert eos_token_ids(tiny_llama.model, tiny_llama.tokenizer) == sorted(tiny_llama.eos)


def _first_greedy_tokens(lm: TinyLM, prompts: list[list[int]]) -> list[int]:
    return [lm.reference(p, 1)[0] for p in prompts]


def test_min_new_tokens_masks_eos_until_reached(tiny_lm: TinyLM) -> None:
    prompt = list(range(40, 75))
    first = tiny_lm.reference(prompt, 1)[0]
    eos = sorted(tiny_lm.eos | {first})  # the greedy first token now ends the answer at once
    plain = SequenceRequest(1, prompt, SamplingParams(max_new_tokens=10))
    batch = CausalLMBatch.from_requests([plain], tiny_lm.tokenizer.pad_token_id, eos)
    gens = batch.prefill(tiny_lm.model)
    assert (gens[0].token_id, gens[0].finish) == (first, FinishReason.EOS)
    held = SequenceRequest(2, prompt, SamplingParams(max_new_tokens=10, min_new_tokens=4))
    tokens = run_waves(tiny_lm, [[held]], eos=eos)[2]
    assert tokens[0] != first  # the best non-EOS token, not a sampled EOS ignored
    assert not set(tokens[:4]) & set(eos)
    assert len(tokens) >= 4
    assert tokens == tiny_lm.reference(prompt, 10, min_new_tokens=4, eos=eos)


def test_rows_with_different_minimums(tiny_lm: TinyLM) -> None:
    reqs = random_requests(12, seed=31)
    eos = sorted(tiny_lm.eos | set(_first_greedy_tokens(tiny_lm, [r.prompt_ids for r in reqs])))
    mins = [0, 1, 3, 7, 0, 12, 2, 5, 0, 9, 4, 1]
    reqs = [
        SequenceRequest(r.seq_id, r.prompt_ids, SamplingParams(max_new_tokens=14, min_new_tokens=m))
        for r, m in zip(reqs, mins, strict=True)
    ]
    got = run_waves(tiny_lm, [reqs[:4], reqs[4:5], reqs[5:]], eos=eos)
    for r, m in zip(reqs, mins, strict=True):
        want = tiny_lm.reference(r.prompt_ids, 14, min_new_tokens=m, eos=eos)
        assert got[r.seq_id] == want, (r.seq_id, m)
        assert len(want) >= max(m, 1)
    assert len(got[0]) == 1  # no minimum: its first token is an end-of-sequence id


def test_min_new_tokens_holds_for_sampled_rows_and_single_token_stops(tiny_llama: TinyLM) -> None:
    prompt = list(range(300, 330))
    first = tiny_llama.reference(prompt, 1)[0]
    stop = ((first,),)  # a single-token stop (an end-of-turn token, say) is held back too
    greedy = SequenceRequest(
        1, prompt, SamplingParams(max_new_tokens=6, min_new_tokens=3), stop_token_ids=stop
    )
    hot = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=50.0, seed=1)
    sampled = SequenceRequest(2, prompt, hot, make_generator(hot))
    eos = sorted(set(range(4, 1500)))  # almost every token ends the answer
    got = run_waves(tiny_llama, [[greedy, sampled]], eos=eos)
    assert got[1][0] != first
    assert len(got[2]) == 6 and not set(got[2]) & set(eos)


def test_sequence_request_checks_resolved_limits() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be resolved"):
        SequenceRequest(1, [5], SamplingParams())
    with pytest.raises(ValueError, match=r"min_new_tokens must be in \[0, 3\]"):
        SequenceRequest(1, [5], SamplingParams(max_new_tokens=3, min_new_tokens=4))
