"""The `kernels` hub inside an evo trial: no download; FlashAttention-3 repositories get the SDPA
drop-in (a trial has no network, and the scorer takes exported standard ops only)."""

import types

from trainer import sdpa_attention

__all__ = ["get_kernel"]


def get_kernel(repo_id, *args, **kwargs):
    if "flash" not in str(repo_id).lower():
        raise RuntimeError(f"kernels.get_kernel({repo_id!r}): evo trials have no kernel hub (no network); only "
                           f"FlashAttention-3 has a built-in replacement (PyTorch SDPA)")
    sdpa_attention.substituted = f"sdpa (torch scaled_dot_product_attention in place of {repo_id} from the kernels hub)"
    return types.SimpleNamespace(flash_attn_interface=sdpa_attention, flash_attn_func=sdpa_attention.flash_attn_func)
