"""FA3's `flash_attn_interface` inside an evo trial: PyTorch SDPA underneath (trainer.sdpa_attention)."""

from trainer import sdpa_attention
from trainer.sdpa_attention import flash_attn_func  # noqa: F401

sdpa_attention.substituted = "sdpa (torch scaled_dot_product_attention in place of flash_attn_interface)"
