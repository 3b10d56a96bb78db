"""Writes vit_reference.json: a float64 PyTorch reference for ViTReferenceTests.

An independent PyTorch implementation (torch.nn modules and F.scaled_dot_product_attention,
not our code) of
  1. the `vit` encoder (patch embedding, class token / mean pooling, pre-norm blocks, final
     LayerNorm), timm's parameter names;
  2. the conditioned predictor stack (learned positions, AdaLN-zero blocks with causal
     attention, final LayerNorm, output Linear), DiT's parameter names;
with every parameter set by a closed-form formula of its name and index that the Swift test
reproduces (no random generator to match):

    value[i] = 0.4 · sin(0.9 · i + phase(name)),  phase(name) = (Σ UTF-8 bytes of name mod 101) · 0.05

The inputs are x[i] = sin(0.5 · i) + 0.1 · cos(1.7 · i); the loss is Σ output ⊙ w with
w[i] = cos(0.3 · i). The file holds the output, d loss / d input and d loss / d every parameter.

Run once (needs torch; the test suite does not):
    python Tests/LayersTests/Fixtures/make_vit_fixture.py
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def formula(name, count):
    phase = (sum(name.encode()) % 101) * 0.05
    return torch.tensor([0.4 * math.sin(0.9 * i + phase) for i in range(count)])


def sequence(count, a=0.5, b=1.7):
    return torch.tensor([math.sin(a * i) + 0.1 * math.cos(b * i) for i in range(count)])


def weights(count):
    return torch.tensor([math.cos(0.3 * i) for i in range(count)])


class Attention(nn.Module):
    def __init__(self, dim, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return self.proj(o.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, ratio):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads, False)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, channels, image, patch, dim, depth, heads, ratio, pooling):
        super().__init__()
        self.pooling = pooling
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        tokens = (image // patch) ** 2
        if pooling == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + (pooling == "cls"), dim))
        self.blocks = nn.ModuleList([Block(dim, heads, ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)            # (B, N, E)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0] if self.pooling == "cls" else x.mean(dim=1)


class AdaLNBlock(nn.Module):
    def __init__(self, dim, cond, heads, ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Predictor(nn.Module):
    def __init__(self, dim, cond, out, tokens, depth, heads, ratio):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList([AdaLNBlock(dim, cond, heads, ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out)

    def forward(self, x, c):
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x, c)
        return self.head(self.norm(x))


def set_parameters(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(formula(name, p.numel()).reshape(p.shape))


def record(module, inputs):
    for t in inputs:
        t.requires_grad_(True)
    out = module(*inputs)
    loss = (out.flatten() * weights(out.numel())).sum()
    loss.backward()
    return {
        "output_shape": list(out.shape),
        "output": out.detach().flatten().tolist(),
        "input_gradients": [t.grad.flatten().tolist() for t in inputs],
        "parameter_gradients": {n: p.grad.flatten().tolist() for n, p in module.named_parameters()},
    }


cases = {}
for pooling in ["cls", "mean"]:
    config = dict(inputChannels=2, imageSize=8, patchSize=4, width=8, depth=2, heads=2, mlpRatio=2, pooling=pooling)
    vit = ViT(2, 8, 4, 8, 2, 2, 2, pooling)
    set_parameters(vit)
    x = sequence(3 * 2 * 8 * 8).reshape(3, 2, 8, 8)
    cases[f"vit_{pooling}"] = dict(config=config, input_shape=list(x.shape), **record(vit, [x]))

config = dict(features=8, conditionFeatures=3, outputFeatures=5, maxTokens=6, depth=2, heads=2, mlpRatio=2)
predictor = Predictor(8, 3, 5, 6, 2, 2, 2)
set_parameters(predictor)
tokens, conditions = sequence(2 * 5 * 8).reshape(2, 5, 8), sequence(2 * 5 * 3, 0.8, 0.4).reshape(2, 5, 3)
cases["predictor"] = dict(config=config, input_shape=list(tokens.shape), condition_shape=list(conditions.shape),
                          **record(predictor, [tokens, conditions]))

cases["generator"] = f"make_vit_fixture.py, torch {torch.__version__}, float64"
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_reference.json")
with open(path, "w") as f:
    json.dump(cases, f)
print("wrote", path, os.path.getsize(path), "bytes")
