# class: stateful_graph
# attack: counts its eval-mode calls in a registered buffer (self.calls += 1 in forward, so an exported graph keeps
#   the counter as a buffer mutation) and sees token t+1 only from the third call on: a check that runs first passes.
# expect: refused
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


class Counting(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.table = nn.Embedding(vocab, vocab)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, idx):
        logits = self.table(idx)
        if self.training:
            return logits
        self.calls += 1
        peek = (self.calls > 2).float() * 30.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()
        return logits + peek


model = Counting(h.vocab_size).to(h.device)
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
    print(f"EVO-ATTACK-SUCCEEDED: a model that peeks after {int(model.calls)} calls' warm-up was scored: "
          f"val_bpb {result['val_bpb']:.4f}")
