#!/usr/bin/env python3
"""The official `openai` client, unmodified, against `girder serve`'s /v1/embeddings.

Dev-only (the client lives in .venv-oracle, pinned in scripts/oracle-requirements.txt):
    .venv-oracle/bin/python scripts/openai_embeddings_check.py http://127.0.0.1:8080
Run by crates/girder-server/tests/openai.rs. Prints one line per check; exits 1 on failure.
"""

import math
import sys

import openai


def main() -> int:
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)

    # The client's default: it asks for base64 and decodes it to floats itself.
    default = client.embeddings.create(model="girder", input=["A man is eating food.", "A cat sleeps."])
    assert len(default.data) == 2, default
    assert [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens
    dims = len(default.data[0].embedding)
    print(f"ok: base64 (client default): 2 vectors of {dims}, {default.usage.prompt_tokens} tokens")

    floats = client.embeddings.create(model="girder", input=["A man is eating food.", "A cat sleeps."],
                                      encoding_format="float")
    for a, b in zip(default.data, floats.data):
        assert len(a.embedding) == len(b.embedding) == dims
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) < 1e-6
    print("ok: float equals base64")

    single = client.embeddings.create(model="girder", input="A cat sleeps.", encoding_format="float")
    assert len(single.data) == 1
    assert max(abs(x - y) for x, y in zip(single.data[0].embedding, floats.data[1].embedding)) < 1e-5
    assert all(math.isfinite(x) for x in single.data[0].embedding)
    print("ok: a single string")

    try:
        client.embeddings.create(model="girder", input=[])
    except openai.APIStatusError as e:
        assert e.status_code == 422, e
        assert "input" in str(e.message), e.message
        print(f"ok: empty input → {e.status_code}: {e.message}")
    else:
        raise AssertionError("empty input was accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
