"""The `gpt` workload: a small decoder-only transformer in nanoGPT's shape, as a character-level LM.

Token and position embeddings, pre-LayerNorm blocks (causal self-attention through
`F.scaled_dot_product_attention`, then a GELU MLP), a final LayerNorm and a head tied to the token
embedding; GPT-2's initialisation (normal, std 0.02; residual projections scaled by 1/sqrt(2 * layers)).
The text is the Python standard library's source (`corpus.py`).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from amp_core.training.workloads import Built
from amp_core.training.workloads.corpus import split, stdlib_corpus, window_loader

WINDOW_BATCHES = 256  # an epoch of distinct windows; the loader repeats after that


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharGPT(pl.LightningModule):
    def __init__(
        self,
        vocab_size: int,
        layers: int = 2,
        heads: int = 4,
        width: int = 64,
        context: int = 32,
        lr: float = 1e-3,
        fused: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.wte = nn.Embedding(vocab_size, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # nanoGPT's groups: weight decay on the matrices, none on biases and LayerNorm gains.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.hparams.lr, betas=(0.9, 0.95), fused=self.hparams.fused or None)

    def matmul_flops_per_step(self, batch_size: int) -> int:
        """nanoGPT's estimate: 6 * N per token (forward + backward of every weight, the tied head once)
        plus 12 * layers * width * context for attention's QK^T and AV, times the tokens of a step."""
        h = self.hparams
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        per_token = 6 * n + 12 * h.layers * h.width * h.context
        return per_token * h.context * batch_size


def build(config: Any) -> Built:
    corpus = stdlib_corpus()
    train_ids, held_out = split(corpus.ids, seed=config.seed)
    module = CharGPT(
        len(corpus.vocab), config.layers, config.heads, config.width, config.context, config.lr, config.fused
    )
    loader = window_loader(
        train_ids, config.context, config.batch_size, batches=min(config.max_steps, WINDOW_BATCHES), seed=config.seed
    )
    notes = {
        "model_class": "amp_core.training.workloads.gpt.CharGPT",
        "parameters": sum(p.numel() for p in module.parameters()),
        "corpus": {**corpus.notes(), "train_characters": len(train_ids), "held_out_characters": len(held_out)},
    }
    return Built(module, loader, module.matmul_flops_per_step(config.batch_size), notes)
