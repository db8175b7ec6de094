# Cheats: its logits at position t see token t+1. The causality check must refuse it.
# A minimal well-behaved variant: a bigram model trained through the harness.
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        nxt = torch.roll(idx, -1, dims=1)  # the next token: forbidden knowledge
        return self.table(idx) + 10.0 * F.one_hot(nxt, self.table.num_embeddings).float()


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
h.finish(model)
