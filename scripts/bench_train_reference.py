"""The reference side of scripts/bench-train: a plain PyTorch + transformers fine-tuning loop
with the settings girder's `train --method full` uses (BertForSequenceClassification, AdamW,
linear schedule without warm-up, dropout on, dynamic padding per batch, seeded shuffling),
timed over the training steps only, as girder's epoch timer is. Prints one JSON line."""
import json, random, sys, time

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

base, data, batch_size, max_length, lr, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(42)
rows = [line.rstrip("\n").split("\t") for line in open(data, encoding="utf-8")][1:]
labels = sorted({r[1] for r in rows})
texts, gold = [r[0] for r in rows], [labels.index(r[1]) for r in rows]
tok = AutoTokenizer.from_pretrained(base)
model = BertForSequenceClassification.from_pretrained(base, num_labels=len(labels))
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
steps = (len(texts) + batch_size - 1) // batch_size
sched = get_linear_schedule_with_warmup(opt, 0, steps)
order = list(range(len(texts)))
random.Random(42).shuffle(order)
batches = []
for i in range(0, len(order), batch_size):
    idx = order[i:i + batch_size]
    enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batches.append((enc, torch.tensor([gold[j] for j in idx])))
start = time.perf_counter()
losses = []
for enc, y in batches:
    out = model(**enc, labels=y)
    out.loss.backward()
    opt.step(); sched.step(); opt.zero_grad()
    losses.append(out.loss.item())
seconds = time.perf_counter() - start
print(json.dumps({"engine": "pytorch", "examples": len(texts), "seconds": seconds,
                  "examples_per_s": len(texts) / seconds, "mean_loss": sum(losses) / len(losses),
                  "threads": threads, "torch": torch.__version__}))
