#!/usr/bin/env python3
"""The official `openai` client, unmodified, against `girder serve`'s /v1/chat/completions
(whole and streamed) and /v1/completions.

Dev-only (the client lives in .venv-oracle, pinned in scripts/oracle-requirements.txt):
    .venv-oracle/bin/python scripts/openai_chat_check.py http://127.0.0.1:8080 EXPECTED.json
EXPECTED.json holds the library's greedy replies (written by crates/girder-server/tests/openai.rs):
{"chat": {"messages": [...], "max_tokens": n, "text": "..."},
 "completion": {"prompt": "...", "max_tokens": n, "text": "..."}}.
Prints one line per check; exits 1 on failure.
"""

import json
import sys

import openai


def main() -> int:
    base = sys.argv[1].rstrip("/")
    with open(sys.argv[2], encoding="utf-8") as f:
        expected = json.load(f)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    chat = expected["chat"]

    reply = client.chat.completions.create(
        model="girder", messages=chat["messages"], max_tokens=chat["max_tokens"], temperature=0
    )
    assert reply.object == "chat.completion", reply
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == chat["text"], (reply.choices[0].message.content, chat["text"])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    print(f"ok: chat, greedy: {reply.usage.completion_tokens} tokens equal the library's reply")

    stream = client.chat.completions.create(
        model="girder",
        messages=chat["messages"],
        max_tokens=chat["max_tokens"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(pieces) == chat["text"], ("".join(pieces), chat["text"])
    assert finish == reply.choices[0].finish_reason, finish
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens, usage
    print(f"ok: chat, streamed: {chunks} chunks add up to the same reply, usage {usage.completion_tokens}")

    completion = expected["completion"]
    answer = client.completions.create(
        model="girder", prompt=completion["prompt"], max_tokens=completion["max_tokens"], temperature=0
    )
    assert answer.choices[0].text == completion["text"], (answer.choices[0].text, completion["text"])
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="girder", prompt=completion["prompt"], max_tokens=completion["max_tokens"],
            temperature=0, stream=True,
        )
        if c.choices
    )
    assert streamed == completion["text"], (streamed, completion["text"])
    print("ok: completions, whole and streamed, equal the library's text")

    seeded = [
        client.chat.completions.create(
            model="girder", messages=chat["messages"], max_tokens=8, temperature=0.8, top_p=0.9, seed=3
        ).choices[0].message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1], seeded
    print("ok: the same seed gives the same sampled reply")

    try:
        client.chat.completions.create(model="girder", messages=[], max_tokens=4)
    except openai.APIStatusError as e:
        assert e.status_code == 422, e
        assert "messages" in str(e.message), e.message
        print(f"ok: empty messages → {e.status_code}: {e.message}")
    else:
        raise AssertionError("empty messages were accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
