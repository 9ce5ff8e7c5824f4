"""Triplane transformer: learned triplane tokens that read the image tokens.

Each block (matching upstream InstantMesh's ``BasicTransformerBlock``):
    x = x + CrossAttn(LN1(x), image_tokens, image_tokens)   # no biases, k/v from the image width
    h = LN2(x); x = x + SelfAttn(h, h, h)                    # packed in_proj, no biases
    x = x + MLP(LN3(x))                                      # Linear -> exact GELU -> Linear
Block LayerNorms use torch's default eps 1e-5 (upstream passes eps=1e-6 to the block but never
uses it); the final LayerNorm uses 1e-6. Tokens are ordered plane-major (3 x low_res x low_res),
and a shared ConvTranspose2d(k=2, s=2) upsamples each plane to ``triplane_high_res``.
"""

from __future__ import annotations

import torch
from torch import nn

from instantmesh.variants import TransformerConfig


class TriplaneBlock(nn.Module):
    def __init__(self, inner_dim: int, cond_dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(inner_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(inner_dim)
        self.cross_attn = nn.MultiheadAttention(
            inner_dim, num_heads, kdim=cond_dim, vdim=cond_dim, bias=False, batch_first=True
        )
        self.norm2 = nn.LayerNorm(inner_dim)
        self.self_attn = nn.MultiheadAttention(inner_dim, num_heads, bias=False, batch_first=True)
        self.norm3 = nn.LayerNorm(inner_dim)
        # Indices 0 and 3 carry the weights (1: GELU, 2 and 4: zero-rate dropout slots), the
        # layout the official checkpoints use.
        self.mlp = nn.Sequential(
            nn.Linear(inner_dim, hidden),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(hidden, inner_dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Default ``need_weights=True`` on purpose: it selects the same (explicit softmax) kernel
        # path upstream runs, which keeps results bit-comparable.
        x = x + self.cross_attn(self.norm1(x), cond, cond)[0]
        normed = self.norm2(x)
        x = x + self.self_attn(normed, normed, normed)[0]
        return x + self.mlp(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """Image tokens (N, L, D_img) -> triplanes (N, 3, C, high_res, high_res)."""

    def __init__(self, cfg: TransformerConfig, image_feat_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        low = cfg.triplane_low_res
        self.pos_embed = nn.Parameter(
            torch.randn(1, 3 * low * low, cfg.inner_dim) * (1.0 / cfg.inner_dim) ** 0.5
        )
        self.layers = nn.ModuleList(
            [
                TriplaneBlock(cfg.inner_dim, image_feat_dim, cfg.num_heads)
                for _ in range(cfg.num_layers)
            ]
        )
        self.norm = nn.LayerNorm(cfg.inner_dim, eps=1e-6)
        self.deconv = nn.ConvTranspose2d(
            cfg.inner_dim, cfg.triplane_dim, kernel_size=2, stride=2, padding=0
        )

    def forward(self, image_feats: torch.Tensor) -> torch.Tensor:
        n = image_feats.shape[0]
        low = self.cfg.triplane_low_res
        x = self.pos_embed.repeat(n, 1, 1)
        for layer in self.layers:
            x = layer(x, image_feats)
        x = self.norm(x)
        # (N, 3*H*W, D) -> (3*N, D, H, W) plane-major, so one deconv serves all planes.
        x = x.view(n, 3, low, low, -1).permute(1, 0, 4, 2, 3).contiguous()
        x = self.deconv(x.view(3 * n, -1, low, low))
        x = x.view(3, n, *x.shape[-3:]).permute(1, 0, 2, 3, 4)
        return x.contiguous()
