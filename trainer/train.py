"""The seed variant: a small modern GPT trained for a fixed wall-clock budget.

This is the file evolution edits. Everything about the model and its optimisation may change;
data, the time budget, seeding and evaluation belong to `trainer.harness` and may not. In the
spirit of nanochat / autoresearch: RMSNorm, rotary embeddings, QK-norm, ReLU² MLP, untied head,
logit soft-cap; Muon for the matrices of the blocks, AdamW for embeddings, head and scalars;
learning rates warm down over the time budget. Attention is PyTorch's own SDPA (flash kernels on
CUDA, nothing downloaded). On CUDA: bf16 autocast and torch.compile; on CPU: tiny defaults that
learn something in seconds.

Hyperparameters are the module-level constants below: `A if CUDA else B` gives the CUDA value
first, then the CPU one. The offline operator mutates them through the syntax tree.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

h = harness.setup()
CUDA = h.is_cuda

# --- hyperparameters -------------------------------------------------------------------------
DEPTH = 8 if CUDA else 2  # transformer blocks
MODEL_DIM = 512 if CUDA else 128  # residual width, a multiple of HEAD_DIM
HEAD_DIM = 128 if CUDA else 32  # even, for rotary
MLP_RATIO = 4
SEQ_LEN = 2048 if CUDA else 128  # training context
DEVICE_BATCH = 64 if CUDA else 8  # rows per micro-batch
GRAD_ACCUM = 4 if CUDA else 1  # micro-batches per step (CUDA: 2**19 tokens per step)
EMBED_LR = 0.6
UNEMBED_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.0
ADAM_BETA1 = 0.8
ADAM_BETA2 = 0.95
MUON_MOMENTUM = 0.95
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
LOGIT_SOFTCAP = 15.0


# --- model -----------------------------------------------------------------------------------
def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim)
        self.attn_scale = nn.Parameter(torch.ones(()))
        self.mlp_scale = nn.Parameter(torch.ones(()))

    def forward(self, x, cos, sin):
        x = x + self.attn_scale * self.attn(norm(x), cos, sin)
        return x + self.mlp_scale * self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, head_dim, max_seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)  # untied
        cos, sin = rotary_tables(max_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -(3 / lin.in_features) ** 0.5, (3 / lin.in_features) ** 0.5)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


# --- optimiser -------------------------------------------------------------------------------
def orthogonalize(G, steps=5):
    """Newton–Schulz iteration towards the nearest semi-orthogonal matrix (Muon's update)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X.type_as(G)


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalised updates, for 2-D weight matrices."""

    def __init__(self, params, lr, momentum, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


# --- training --------------------------------------------------------------------------------
model = GPT(h.vocab_size, DEPTH, MODEL_DIM, HEAD_DIM, max(SEQ_LEN, h.eval_seq_len)).to(h.device)
matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
scalars = [p for p in model.blocks.parameters() if p.ndim < 2]
adam = torch.optim.AdamW(
    [dict(params=[model.wte.weight], lr=EMBED_LR), dict(params=[model.lm_head.weight], lr=UNEMBED_LR),
     dict(params=scalars, lr=SCALAR_LR)],
    betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=CUDA,
)
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
optimizers = [adam, muon]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

n_params = sum(p.numel() for p in model.parameters())
n_matmul = sum(p.numel() for p in matrices) + model.lm_head.weight.numel()
flops_per_token = 6 * n_matmul + 12 * DEPTH * MODEL_DIM * SEQ_LEN  # weights + causal attention
print(f"params {n_params:,} | depth {DEPTH} | width {MODEL_DIM} | seq {SEQ_LEN} | device {h.device}")


def train_loss(x, y):
    with h.autocast():
        logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


# The loss is compiled with the model so the fp32 logits never round-trip through memory
# (+4 points of MFU on an H100); the harness scores the eager `model` itself.
train_loss_fn = torch.compile(train_loss, dynamic=False) if CUDA else train_loss
batches = h.train_batches(DEVICE_BATCH, SEQ_LEN)
while not h.done:
    lrm = lr_multiplier(h.progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    for _ in range(GRAD_ACCUM):
        x, y = next(batches)
        loss = train_loss_fn(x, y)
        (loss / GRAD_ACCUM).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    h.step(tokens=DEVICE_BATCH * SEQ_LEN * GRAD_ACCUM, loss=loss)

h.finish(model, flops_per_token=flops_per_token, extra=dict(depth=DEPTH, width=MODEL_DIM))
