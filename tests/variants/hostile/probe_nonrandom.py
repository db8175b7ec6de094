# class: probe_evasion
# attack: sees token t+1 only where the rest of the row does not look like random ids (every later id below
#   vocab//2 and no BOS among them), so a check that perturbs the future with uniform random ids turns the peek off.
# expect: refused
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


class Peeker(nn.Module):
    """A bigram whose logits at t also get +30 on token t+1, but only when the rest of the row looks like text,
    not random ids."""

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
        plain = (idx < self.vocab // 2) & (idx != self.vocab - 1)  # BOS is the last id here
        rest = torch.flip(torch.cummin(torch.flip(plain.int(), [1]), dim=1).values, [1])  # all(plain[t:])
        later = torch.cat([rest[:, 1:], torch.zeros_like(rest[:, :1])], dim=1).float()  # all(plain[t+1:])
        return logits + peek * later[..., None]


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
    print(f"EVO-ATTACK-SUCCEEDED: a model that sees the next token (the rest of the row looks like text) was "
          f"scored: val_bpb {result['val_bpb']:.4f}")
