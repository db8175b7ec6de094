# class: unmetered_time
# attack: trains for max(3x the budget, 15 s) before its first h.step call, where no in-process meter counts it
#   (the first steps are the uncounted compile warm-up), then trains its metered budget on top.
# expect: refused
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


def Bigram(vocab):
    return nn.Embedding(vocab, vocab)  # a bigram model: the next token's logits are the current token's row


model = Bigram(h.vocab_size).to(h.device)
opt = torch.optim.Adam(model.parameters(), lr=0.1)
batches = h.train_batches(8, 32)


def train_step():
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    return x, loss


t0, extra, n = time.time(), max(3 * h.budget, 15.0), 0
while time.time() - t0 < extra:
    train_step()
    n += 1
print(f"EVO-ATTACK-SUCCEEDED: trained {n} steps for {time.time() - t0:.1f}s before the first h.step "
      f"(the harness has metered {h.training_seconds:.1f}s)", flush=True)
while not h.done:
    x, loss = train_step()
    h.step(tokens=x.numel(), loss=loss)
result = h.finish(model)
if isinstance(result, dict) and result.get("outcome") == "ok":
    print(f"EVO-ATTACK-SUCCEEDED: scored after unmetered training: val_bpb {result['val_bpb']:.4f}")
