"""FlashAttention-3's `flash_attn_func`, on PyTorch's own `scaled_dot_product_attention`.

autoresearch's train.py downloads an FA3 kernel from the `kernels` hub at start. Inside an evo
trial there is no network, and the scorer loads an exported graph of standard aten ops only, so a
downloaded kernel could not be scored even where it could be fetched. This drop-in keeps FA3's
calling convention: (B, T, H, D) tensors, `causal`, `window_size=(left, right)` (-1 = unbounded,
keys j of query i with i - left <= j <= i + right, aligned to the bottom right as FA3 does when the
key sequence is longer), `softmax_scale`, and grouped-query attention (fewer k/v heads than q
heads). Full causal attention takes SDPA's `is_causal` path (flash/efficient kernels on CUDA); a
sliding window is a boolean mask built from `arange`, which `torch.export` records as plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Set by the `kernels` shim when it hands this module out instead of a hub kernel; the trial
# summary reports it (`attention:`).
substituted: str | None = None


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    deterministic=False, return_attn_probs=False, **unsupported):
    """Attention over (B, T, H, D) q and (B, S, H_kv, D) k, v; returns (B, T, H, D)."""
    if softcap:
        raise NotImplementedError("flash_attn_func fallback: softcap is not supported on PyTorch SDPA")
    if return_attn_probs:
        raise NotImplementedError("flash_attn_func fallback: return_attn_probs is not supported")
    used = {name for name, value in unsupported.items() if value not in (None, 0, 1, False)}
    if used:
        raise NotImplementedError(f"flash_attn_func fallback: {', '.join(sorted(used))} not supported")
    T, H, S, H_kv = q.size(1), q.size(2), k.size(1), k.size(2)
    if H % H_kv:
        raise ValueError(f"flash_attn_func: {H} query heads are not a multiple of {H_kv} key/value heads")
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if H_kv != H:
        kt, vt = kt.repeat_interleave(H // H_kv, dim=1), vt.repeat_interleave(H // H_kv, dim=1)
    if kt.dtype != qt.dtype and not torch.is_autocast_enabled():
        kt, vt = kt.to(qt.dtype), vt.to(qt.dtype)
    left, right = (int(w) for w in window_size)
    if causal:
        right = 0
    unbounded_left = left < 0 or left >= S - 1
    if causal and unbounded_left and T == S:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=softmax_scale)
    elif unbounded_left and (right < 0 or right >= S - 1):
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=softmax_scale)
    else:
        i = torch.arange(T, device=q.device)[:, None] + (S - T)
        j = torch.arange(S, device=q.device)[None, :]
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
        if left >= 0:
            allowed = allowed & (j >= i - left)
        if right >= 0:
            allowed = allowed & (j <= i + right)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed, scale=softmax_scale)
    return out.transpose(1, 2)
