# Fails if any key or token reached the trial's environment. Also the seed program of the LLM
# engine tests (tests/test_llm_engine.py), so every trial of their runs, the LLM's children
# included, checks its own environment: their scripted edits change the CUDA and MATRIX_LR lines.
# A minimal well-behaved variant: a bigram model trained through the harness.
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()
CUDA = h.is_cuda
MATRIX_LR = 0.1
# os.environ, and the process's own environment block: a trial forked from a server that was
# started with the coordinator's environment would show the key there, whatever os.environ says.
pairs = list(os.environ.items())
if os.path.exists('/proc/self/environ'):
    with open('/proc/self/environ', 'rb') as f:
        pairs += [tuple(e.decode(errors='replace').partition('=')[::2]) for e in f.read().split(b'\0') if e]
leaked = sorted({k for k, v in pairs if any(s in k for s in ('KEY', 'TOKEN', 'SECRET')) or v.startswith('sk-ant')})
if leaked:
    raise SystemExit(f'secrets in trial environment: {leaked}')


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.table(idx)


model = Bigram(h.vocab_size).to(h.device)
opt = torch.optim.Adam(model.parameters(), lr=MATRIX_LR)
batches = h.train_batches(8, 32)
while not h.done:
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, h.vocab_size), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    h.step(tokens=x.numel(), loss=loss)
h.finish(model)
