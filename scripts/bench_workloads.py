#!/usr/bin/env python3
"""Builds the encoder benchmark's workloads (issue 5), deterministically, for one BERT folder.

    .venv-oracle/bin/python scripts/bench_workloads.py \
        --model models/all-MiniLM-L6-v2 --out .cache/bench/workloads.json

Four workloads, token counts measured with the model's own tokenizer, [CLS] and [SEP] included:

    a  32 sentences of 12-20 words                        max_length 256
    b  32 sentences, alternately ~10 tokens and ~200      max_length 256
    c  8 texts of exactly 512 tokens                      max_length 512
    s  1 sentence of exactly 17 tokens                    max_length 256

256 is all-MiniLM-L6-v2's real limit (sentence_bert_config.json); (c) uses 512, which its position
embeddings allow (max_position_embeddings). No text is truncated at its workload's max_length.

The texts come from a fixed word list and a seeded `random.Random`: no download, same output on
every machine and every run (the tokenizer is the only input). Each workload also carries the
useful FLOPs of one pass over it, counting only real (non-pad) tokens:

    linear, per token:          2 * L * (4*h*h + 2*h*ffn)     (Q, K, V, attention output, FFN up, down)
    attention, per sequence:    2 * 2 * L * n*n * h           (Q.K^T and P.V, all heads together)

Embeddings, layer norms, GELU, softmax, biases and pooling are left out: they are a few percent
and are not matrix products. Only the tokenizer is loaded here (the `tokenizers` package).
"""

import argparse
import json
import pathlib
import random
import sys

SEED = 20261127

# 214 common English words. Most are one WordPiece in BERT's uncased vocabulary, a few split into
# more; exact lengths are reached by counting pieces per word (see `exact_text`).
WORDS = """
the of and to in is was for on that with as by at from his her it an were are which this be
has had not but its they have one their new first after who also been two more time other year
she all into there when over can would up may most some only out three made between city under
during about people world state school part later while many such where then both these
film music team game season water river house family life war area power group system work
government history series company country album number public high small large early local
national several known well since long american called show around line back home second
following same including name title each held death named began however along became
until played west east north south good best land place still through old being age light
church army field club body market report point road order garden window table paper letter
story morning evening night summer winter spring autumn bridge island mountain valley forest
village station harbor street corner kitchen doctor teacher student farmer writer painter
engine signal result method answer question reason process common simple quiet bright
heavy careful gentle sudden ancient modern golden silver wooden narrow distant familiar
""".split()

SHORT_WORDS = (12, 20)  # (a): words per sentence, inclusive


def load_tokenizer(model_dir: pathlib.Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # tokenizer.json of all-MiniLM-L6-v2 bakes in truncation at 128 and fixed padding to 128;
    # transformers overrides both on every call, and so do we: count the text's own tokens.
    tok.no_truncation()
    tok.no_padding()
    return tok


def count(tok, text: str) -> int:
    return len(tok.encode(text).ids)  # [CLS] ... [SEP]


def word_pieces(tok) -> dict:
    """WordPieces per word of WORDS (BERT's pre-tokenizer splits on spaces and punctuation, so a
    text's token count is 2 + the words' pieces + one '.' per sentence)."""
    return {w: count(tok, w) - 2 for w in WORDS}


def sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def exact_text(tok, rng: random.Random, target: int, pieces: dict) -> str:
    """Sentences of 8-20 words whose token count is exactly `target`."""
    singles = [w for w, n in pieces.items() if n == 1]
    sentences: list[list[str]] = []
    n = 2  # [CLS] [SEP]
    while n < target:
        room = target - n
        if not sentences or len(sentences[-1]) >= sentences[-1].limit:
            if room < 2:  # a new sentence costs a word and its '.'
                sentences[-1].append(rng.choice(singles))
                n += 1
                continue
            sentences.append(_Sentence(rng.randint(8, 20)))
            n += 1  # its '.'
            room -= 1
        fits = [w for w in WORDS if pieces[w] <= room] if room < 4 else WORDS
        word = rng.choice(fits)
        sentences[-1].append(word)
        n += pieces[word]
    text = " ".join(" ".join([s[0].capitalize()] + s[1:]) + "." for s in sentences)
    got = count(tok, text)
    if got != target:
        raise RuntimeError(f"built a text of {got} tokens, wanted {target}")
    return text


class _Sentence(list):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit


def flops(cfg: dict, token_counts) -> dict:
    L = cfg["num_hidden_layers"]
    h = cfg["hidden_size"]
    ffn = cfg["intermediate_size"]
    per_token = 2 * L * (4 * h * h + 2 * h * ffn)
    linear = per_token * sum(token_counts)
    attention = sum(2 * 2 * L * n * n * h for n in token_counts)
    return {"flops": linear + attention, "flops_linear": linear, "flops_attention": attention}


def build(tok, cfg):
    rng = random.Random(SEED)
    pieces = word_pieces(tok)
    if sum(n == 1 for n in pieces.values()) < 20:
        sys.exit("error: fewer than 20 single-piece words: is this a BERT uncased vocabulary?")

    a = [sentence(rng, rng.randint(*SHORT_WORDS)) for _ in range(32)]

    b = []
    for i in range(32):
        # Alternate short and long, so that neither half sits at one end of the input.
        target = rng.randint(8, 12) if i % 2 == 0 else rng.randint(190, 210)
        b.append(exact_text(tok, rng, target, pieces))

    c = [exact_text(tok, rng, 512, pieces) for _ in range(8)]
    s = [exact_text(tok, rng, 17, pieces)]

    spec = {
        "a": (a, 256, "32 sentences of 12-20 words"),
        "b": (b, 256, "32 sentences, alternately ~10 and ~200 tokens"),
        "c": (c, 512, "8 texts of exactly 512 tokens"),
        "s": (s, 256, "1 sentence of exactly 17 tokens"),
    }
    out = {}
    for name, (texts, max_length, description) in spec.items():
        tokens = [count(tok, t) for t in texts]
        too_long = [n for n in tokens if n > max_length]
        if too_long:
            sys.exit(f"error: workload {name} has texts over {max_length} tokens: {too_long}")
        out[name] = {
            "description": description,
            "max_length": max_length,
            "num_texts": len(texts),
            "tokens": tokens,
            "total_tokens": sum(tokens),
            "max_tokens": max(tokens),
            # what a padded batch computes: every text padded to the longest
            "padded_tokens": max(tokens) * len(tokens),
            **flops(cfg, tokens),
            "texts": texts,
        }
    return out


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(root / "models/all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=str(root / ".cache/bench/workloads.json"))
    args = ap.parse_args()

    model_dir = pathlib.Path(args.model)
    for f in ("config.json", "tokenizer.json"):
        if not (model_dir / f).is_file():
            sys.exit(f"error: {model_dir / f} is missing: run scripts/fetch-models")
    cfg = json.loads((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir)
    workloads = build(tok, cfg)

    import tokenizers

    doc = {
        "generator": "scripts/bench_workloads.py",
        "seed": SEED,
        "tokenizers_version": tokenizers.__version__,
        "model": {
            "path": str(model_dir),
            "model_type": cfg.get("model_type"),
            "num_hidden_layers": cfg["num_hidden_layers"],
            "hidden_size": cfg["hidden_size"],
            "intermediate_size": cfg["intermediate_size"],
            "num_attention_heads": cfg["num_attention_heads"],
        },
        "flops_formula": "per real token 2*L*(4*h*h + 2*h*ffn); per sequence of n tokens 2*2*L*n*n*h",
        "workloads": workloads,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, w in workloads.items():
        print(
            f"workload {name}: {w['num_texts']} texts, tokens {min(w['tokens'])}-{w['max_tokens']}"
            f" (total {w['total_tokens']}, padded {w['padded_tokens']}),"
            f" {w['flops'] / 1e9:.3f} GFLOP useful",
            file=sys.stderr,
        )
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
