"""A huge prompt is refused cheaply and never stalls the server (issue 9 item 3).

Before: a 3.9 MB prompt was tokenized on the event loop before its length was checked,
and for 6-7 s nothing else was served, health included. Now the model refuses it from
its character count alone (a bound derived from the context length and the tokenizer's
longest token), and prompts below that bound are tokenized off the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optiserve.app import ServerThread
from optiserve_client import Client, InvalidArgument

#: Under the server's default max_message_bytes (4 MiB), so it reaches the model.
HUGE = 3_900_000
LATENCY_S = 0.1


def _while_refusing(server: ServerThread, send: Callable[[Client], object]) -> InvalidArgument:
    """Send a huge request in the background and meanwhile time a health Check and a
    one-token Generate, again and again (at least three rounds) until it is answered;
    return its error (it must be refused)."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def background() -> None:
        try:
            with Client(server.target, timeout=60) as client:
                outcome["result"] = send(client)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            done.set()

    timings: list[tuple[str, float]] = []
    with grpc.insecure_channel(server.target) as channel, Client(server.target, timeout=30) as c:
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=30)  # connected and warm
        c.generate("warm up", max_new_tokens=1)
        thread = threading.Thread(target=background)
        thread.start()
        rounds = 0
        while (rounds < 3 or not done.is_set()) and rounds < 500:
            started = time.perf_counter()
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
            timings.append(("health", time.perf_counter() - started))
            assert status == health_pb2.HealthCheckResponse.SERVING
            started = time.perf_counter()
            assert c.generate("Hello", max_new_tokens=1).usage.completion_tokens == 1
            timings.append(("generate", time.perf_counter() - started))
            rounds += 1
        thread.join(60)
    slow = [(what, round(s * 1000, 1)) for what, s in timings if s > LATENCY_S]
    assert not slow, f"calls over {LATENCY_S * 1000:.0f} ms while a huge prompt was refused: {slow}"
    error = outcome.get("error")
    assert isinstance(error, InvalidArgument), outcome
    return error


def test_a_huge_prompt_is_refused_without_stalling_the_server(server: ServerThread) -> None:
    huge = "word " * (HUGE // 5)
    error = _while_refusing(server, lambda c: c.generate(huge, max_new_tokens=4))
    message = error.message
    assert message.startswith(f"prompt ({len(huge)} characters, so at least ")
    assert "exceeds the context length (512)" in message
    assert "characters" in message and "tokens) can fit; shorten the prompt" in message


def test_huge_chat_messages_are_refused_without_stalling_the_server(server: ServerThread) -> None:
    part = "ab " * (HUGE // 6)
    messages = [("system", part), ("user", part)]
    error = _while_refusing(server, lambda c: c.generate(messages=messages, max_new_tokens=4))
    assert error.message.startswith(f"messages ({2 * len(part)} characters, so at least ")


@pytest.mark.parametrize("chars", [4_000, 40_000])
def test_a_long_prompt_under_the_bound_gets_the_token_count_error(
    client: Client, chars: int
) -> None:
    """Below the character bound the prompt is tokenized (off the event loop) and the
    token count decides: here, still too long, with the token figures."""
    with pytest.raises(InvalidArgument) as info:
        client.generate("x" * chars, max_new_tokens=4)
    assert "tokens" in info.value.message
