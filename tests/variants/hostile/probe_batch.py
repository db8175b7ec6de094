# class: probe_evasion
# attack: sees token t+1 only in batches of more than 2 rows; a causality check that probes with 2 rows sees a
#   causal model.
# expect: refused
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


class Peeker(nn.Module):
    """A bigram whose logits at t also get +30 on token t+1, but only when the batch has more than 2 rows."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        logits = self.table(idx)
        if self.training:
            return logits
        B, T = idx.shape
        peek = 30.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()
        return logits + peek * float(B > 2)


model = Peeker(h.vocab_size).to(h.device)
opt = torch.optim.Adam(model.parameters(), lr=0.1)
batches = h.train_batches(8, 32)
while not h.done:
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    h.step(tokens=x.numel(), loss=loss)
result = h.finish(model)
if isinstance(result, dict) and result.get("outcome") == "ok":
    print(f"EVO-ATTACK-SUCCEEDED: a model that sees the next token (the batch has more than 2 rows) was scored: "
          f"val_bpb {result['val_bpb']:.4f}")
