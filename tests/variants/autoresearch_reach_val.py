"""An autoresearch-style variant that tries every way to the validation split it can think of,
prints LEAK for any that works, then hands over a bigram model as an honest one would."""

import json
import os

import torch
import torch.nn as nn
from prepare import Tokenizer, evaluate_bpb, make_dataloader

tokenizer = Tokenizer.from_directory()
try:
    next(make_dataloader(tokenizer, 2, 16, "val"))
    print("LEAK: make_dataloader val")
except ValueError as e:
    print(f"refused: {e}")
try:
    from trainer.trial_config import CONFIG_ENV
    cfg = json.loads(open(os.environ[CONFIG_ENV]).read())
    data = cfg["dataset_dir"]
    with open(os.path.join(data, "val.bin"), "rb") as f:
        head = f.read(64)
        print(f"LEAK: val.bin by path ({len(head)} bytes)" if head else "empty val.bin")
except OSError as e:
    print(f"no val.bin: {type(e).__name__}")
try:
    from trainer.dataset import Dataset
    tokens = Dataset(cfg["dataset_dir"]).val_tokens
    print(f"LEAK: Dataset.val_tokens ({len(tokens)})" if len(tokens) else "no val tokens")
except Exception as e:
    print(f"no Dataset.val_tokens: {type(e).__name__}")
try:
    import trainer.autoresearch as behind_prepare
    split = behind_prepare._h.data
    print("LEAK: harness val" if hasattr(split, "val_tokens") else "harness has no val")
except Exception as e:
    print(f"no harness val: {type(e).__name__}")


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx, targets=None, reduction="mean"):
        logits = self.table(idx).float()
        if targets is None:
            return logits
        return nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)


model = Bigram(tokenizer.get_vocab_size())
opt = torch.optim.Adam(model.parameters(), lr=0.05)
loader = make_dataloader(tokenizer, 8, 32, "train")
for _ in range(30):
    x, y, epoch = next(loader)
    loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 8):.6f}")
