# Crashes with an ordinary exception.
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
        return self.table(idx)


model = Bigram(h.vocab_size).to(h.device)
raise RuntimeError('shapes do not match: a bug in the variant')
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
