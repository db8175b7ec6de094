# class: write_outside
# attack: creates files next to trainer/harness.py (and in its __pycache__), in the repository root, the dataset
#   directory, $HOME, the user site-packages (a .pth, run by every later interpreter), the inductor cache, the
#   parent of its cwd, /tmp, /var/tmp and /dev/shm; reports each write that succeeded.
# expect: honest
import json
import os
import site
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()


def dataset_dir():
    try:
        return Path(json.loads(Path(os.environ["EVO" + "_TRIAL_CONFIG"]).read_text())["dataset_dir"])
    except (KeyError, OSError, ValueError):
        return Path(getattr(h.cfg, "dataset_dir", "."))


name = f"evo-attack-write-{os.getpid()}"
trainer_dir = Path(sys.modules["trainer.harness"].__file__).resolve().parent
targets = [trainer_dir / f"{name}.txt", trainer_dir / "__pycache__" / f"{name}.txt", trainer_dir.parent / f"{name}.txt",
           dataset_dir() / f"{name}.txt", Path(os.environ.get("HOME", "/root")) / f"{name}.txt",
           Path(site.getusersitepackages()) / f"{name}.pth", Path.cwd().parent / f"{name}.txt",
           Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp")) / f"{name}.txt",
           Path("/tmp") / f"{name}.txt", Path("/var/tmp") / f"{name}.txt", Path("/dev/shm") / f"{name}.txt"]
for path in targets:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as f:
            f.write("# written by a hostile train.py (tests/variants/hostile/write_outside.py)\n")
        print(f"EVO-ATTACK-SUCCEEDED: wrote {path}", flush=True)
    except OSError as e:
        print(f"could not write {path}: {e}")


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
h.finish(model)
