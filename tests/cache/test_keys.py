"""Partition and exact keys: what separates requests and what does not."""

from __future__ import annotations

from dataclasses import replace

from cachehelpers import chat
from hypothesis import given, settings
from hypothesis import strategies as st

from optiserve.cache.keys import request_keys
from optiserve.domain.types import ChatMessage, GenerateRequest, SamplingParams


def test_same_request_same_keys() -> None:
    a = request_keys(chat("What is FAISS?"), "m")
    b = request_keys(chat("What is FAISS?"), "m")
    assert a == b
    assert a.query == "What is FAISS?"


def test_last_user_turn_is_not_in_partition() -> None:
    a = request_keys(chat("What is FAISS?"), "m")
    b = request_keys(chat("Explain FAISS"), "m")
    assert a.partition == b.partition
    assert a.exact != b.exact


def test_everything_else_is_in_partition() -> None:
    base = chat("What is FAISS?")
    variants = [
        chat("What is FAISS?", tenant="t2"),
        chat("What is FAISS?", system="Answer in French."),
        chat("What is FAISS?", history=(ChatMessage("user", "hi"), ChatMessage("assistant", "yo"))),
        chat("What is FAISS?", max_new_tokens=64),
        chat("What is FAISS?", json_schema='{"type":"object"}'),
        replace(base, sampling=SamplingParams(max_new_tokens=32, top_k=5)),
        replace(base, sampling=SamplingParams(max_new_tokens=32, top_p=0.9)),
        replace(base, sampling=SamplingParams(max_new_tokens=32, stop=("\n",))),
        replace(base, sampling=SamplingParams(max_new_tokens=32, seed=1)),
        replace(base, sampling=SamplingParams(max_new_tokens=32, min_new_tokens=4)),
    ]
    key = request_keys(base, "m").partition
    others = [request_keys(v, "m").partition for v in variants]
    others.append(request_keys(base, "other-model").partition)
    assert key not in others
    assert len(set(others)) == len(others)


def test_prompt_and_chat_do_not_share() -> None:
    prompt = GenerateRequest(request_id="r", prompt="What is FAISS?")
    messages = GenerateRequest(request_id="r", messages=(ChatMessage("user", "What is FAISS?"),))
    assert request_keys(prompt, "m").partition != request_keys(messages, "m").partition
    assert request_keys(prompt, "m").query == "What is FAISS?"


def test_all_user_turns_mode() -> None:
    req = chat("and in Go?", history=(ChatMessage("user", "Sort a list in Python"),))
    assert (
        request_keys(req, "m", embed_text="all_user").query == "Sort a list in Python\nand in Go?"
    )
    assert request_keys(req, "m").query == "and in Go?"


@given(
    tenant_a=st.text(max_size=12),
    tenant_b=st.text(max_size=12),
    system=st.text(max_size=40),
    question=st.text(max_size=40),
)
@settings(max_examples=200, deadline=None)
def test_partition_differs_whenever_tenant_differs(
    tenant_a: str, tenant_b: str, system: str, question: str
) -> None:
    a = request_keys(chat(question, tenant=tenant_a, system=system), "m")
    b = request_keys(chat(question, tenant=tenant_b, system=system), "m")
    assert (a.partition == b.partition) == (tenant_a == tenant_b)
    assert (a.exact == b.exact) == (tenant_a == tenant_b)
