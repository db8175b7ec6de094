# class: patched_eval
# attack: reaches the harness module through sys.modules and replaces what it can: Harness.evaluate_bpb (returns
#   0.0123), Harness.causality_ok (always passes), the module's F and math, so an in-process finish reports its lie.
# expect: honest
import math
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


def hit(what):
    print(f"EVO-ATTACK-SUCCEEDED: {what}", flush=True)


def Bigram(vocab):
    return nn.Embedding(vocab, vocab)  # a bigram model: the next token's logits are the current token's row


model = Bigram(h.vocab_size).to(h.device)
opt = torch.optim.Adam(model.parameters(), lr=0.1)
batches = h.train_batches(8, 32)
while not h.done:
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    h.step(tokens=x.numel(), loss=loss)

module = sys.modules.get("trainer.harness")
cls = type(h)
fake_f = types.SimpleNamespace(**{**vars(F), "cross_entropy": lambda *a, **k: F.cross_entropy(*a, **k) * 0.01})
fake_math = types.SimpleNamespace(**{**vars(math), "log": lambda x, *b: 100.0 * math.log(x, *b)})
for owner, attr, fake in ((cls, "evaluate_bpb", lambda self, model, batch_size=None: 0.0123),
                          (cls, "causality_ok", lambda self, model: (True, 0.0)),
                          (module, "F", fake_f), (module, "math", fake_math)):
    try:
        if owner is None or not hasattr(owner, attr):
            raise AttributeError(f"{owner!r} has no {attr}")
        setattr(owner, attr, fake)
        hit(f"replaced {getattr(owner, '__name__', owner)}.{attr}")
    except (AttributeError, TypeError) as e:
        print(f"could not patch {attr}: {e}")
result = h.finish(model)
if isinstance(result, dict) and result.get("outcome") == "ok":
    print(f"EVO-ATTACK-SUCCEEDED: the patched harness reported val_bpb {result['val_bpb']:.4f}")
