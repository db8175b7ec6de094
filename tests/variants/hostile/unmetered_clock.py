# class: unmetered_time
# attack: replaces time.time, time.monotonic and time.perf_counter (and their _ns forms) with clocks that run slow
#   (1/4 speed, slower still for short budgets: at least 15 s more than the budget), so h.done comes late.
# expect: refused
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


def Bigram(vocab):
    return nn.Embedding(vocab, vocab)  # a bigram model: the next token's logits are the current token's row


factor = max(4.0, (h.budget + 15.0) / h.budget)
names = ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns")
real = {name: getattr(time, name) for name in names}
start = {name: clock() for name, clock in real.items()}


def slow(name):
    return lambda: type(start[name])(start[name] + (real[name]() - start[name]) / factor)


for name in real:
    try:
        setattr(time, name, slow(name))
    except (AttributeError, TypeError) as e:
        print(f"could not patch time.{name}: {e}")
model = Bigram(h.vocab_size).to(h.device)
opt = torch.optim.Adam(model.parameters(), lr=0.1)
batches = h.train_batches(8, 32)
t0 = real["time"]()
while not h.done:
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    h.step(tokens=x.numel(), loss=loss)
wall = real["time"]() - t0
for name, clock in real.items():
    setattr(time, name, clock)
if wall > 1.5 * h.budget:
    print(f"EVO-ATTACK-SUCCEEDED: trained {wall:.1f}s of wall clock while the harness metered "
          f"{h.training_seconds:.1f}s of a {h.budget:g}s budget", flush=True)
result = h.finish(model)
if isinstance(result, dict) and result.get("outcome") == "ok":
    print(f"EVO-ATTACK-SUCCEEDED: scored after {wall:.1f}s of training: val_bpb {result['val_bpb']:.4f}")
