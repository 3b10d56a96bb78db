#!/usr/bin/env python3
"""PyTorch reference for `anticollapse bench step` (VICReg, float32, CPU, eager).

MLP encoder (`--encoder 784,1024,1024`, the default) or the ResNet of the model description
(`--encoder resnet --image 3,32,32 --stem-channels 32 --stages 32,64,128,256 --blocks 2`):
stem Conv3x3(stem stride, pad 1, no bias) BN ReLU; per stage `--blocks` basic blocks
[Conv3x3(s) BN ReLU Conv3x3 BN] + shortcut [Conv1x1(s) BN when the shape changes], ReLU,
the first block of every stage after the first with stride 2; global average pooling
(torchvision's BasicBlock, as `ResNetDescription.makeLayers`); or the ViT of the model
description (`--encoder vit --image 1,28,28 --patch-size 4 --width 192 --depth 6 --heads 3`):
patch embedding Conv2d(P, stride P), class token, learned positional embeddings, pre-norm
blocks [LayerNorm(eps 1e-6), multi-head attention with a fused QKV (bias) and an output
projection (`F.scaled_dot_product_attention`), LayerNorm, MLP 4·width with exact GELU], final
LayerNorm, the class token (timm's VisionTransformer, as `VisionTransformer.swift`).
`--compile` wraps the model in `torch.compile`. `--channels-last` runs the ResNet in
torch.channels_last memory format. `--optimizer sgd` is SGD(lr 0.05, momentum 0.9,
weight decay 5e-4), as `bench step --optimizer sgd`.

One timed step = zero_grad, forward of two views of `--batch` random rows through the
same encoder + projector MLP (nn.BatchNorm1d in training mode with per-view batch
statistics, eps 1e-5, then ReLU, between layers; last encoder layer linear; last
projector layer without bias), the VICReg loss (25 invariance, 25 variance, 1 covariance),
backward, the gradient norm, and the LARS optimizer of the VICReg reference
(facebookresearch/vicreg main_vicreg.py; lr 0.2, weight decay 1e-6, momentum 0.9,
eta 0.001, biases and BN parameters excluded from weight decay and the trust ratio).
"""
import argparse
import json
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="784,1024,1024")
    p.add_argument("--projector", default="1024,2048,2048")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", choices=["lars", "sgd"], default="lars")
    p.add_argument("--image", default="3,32,32", help="C,H,W of a resnet encoder")
    p.add_argument("--stem-channels", type=int, default=16)
    p.add_argument("--stem-stride", type=int, default=1)
    p.add_argument("--stages", default="16,32,64")
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--channels-last", action="store_true", help="resnet in torch.channels_last")
    p.add_argument("--patch-size", type=int, default=4, help="vit: patch size")
    p.add_argument("--width", type=int, default=64, help="vit: token width")
    p.add_argument("--depth", type=int, default=4, help="vit: blocks")
    p.add_argument("--heads", type=int, default=4, help="vit: attention heads")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", action="store_true", help="print a JSON line too")
    return p.parse_args()


args = parse()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)


def widths(text):
    return [] if text in ("", "none") else [int(w) for w in text.split(",")]


def mlp(ws, last_bias):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(ws, ws[1:])):
        last = i == len(ws) - 2
        layers.append(nn.Linear(n_in, n_out, bias=(not last) or last_bias))
        if not last:
            layers += [nn.BatchNorm1d(n_out, eps=1e-5), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


def resnet(c_in, stem, stem_stride, stages, blocks):
    layers = [nn.Conv2d(c_in, stem, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
    c = stem
    for s, c_out in enumerate(stages):
        for b in range(blocks):
            layers.append(BasicBlock(c, c_out, 2 if s > 0 and b == 0 else 1))
            c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for m in layers:
        for conv in [m] + list(m.modules() if isinstance(m, nn.Module) else []):
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(*layers)


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, channels, size, patch, width, depth, heads):
        super().__init__()
        self.patch = nn.Conv2d(channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


def off_diagonal(x):
    n, m = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg(x, y):
    b, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (b - 1)
    cov_y = (y.T @ y) / (b - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


class LARS(torch.optim.Optimizer):
    """As in the VICReg reference (main_vicreg.py)."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=None, lars_adaptation_filter=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if g["weight_decay_filter"] is None or not g["weight_decay_filter"](p):
                    dp = dp.add(p, alpha=g["weight_decay"])
                if g["lars_adaptation_filter"] is None or not g["lars_adaptation_filter"](p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def exclude_bias_and_norm(p):
    return p.ndim == 1


def main():
    torch.manual_seed(args.seed)
    proj = widths(args.projector)
    if args.encoder == "resnet":
        shape = [int(v) for v in args.image.split(",")]
        stages = widths(args.stages)
        encoder = resnet(shape[0], args.stem_channels, args.stem_stride, stages, args.blocks)
        enc = f"resnet {args.image} stem {args.stem_channels}/{args.stem_stride} stages {stages} x {args.blocks}"
        if args.channels_last:
            enc += ", channels_last"
    elif args.encoder == "vit":
        shape = [int(v) for v in args.image.split(",")]
        encoder = ViT(shape[0], shape[1], args.patch_size, args.width, args.depth, args.heads)
        enc = f"vit {args.image} patch {args.patch_size} width {args.width} depth {args.depth} heads {args.heads}"
    else:
        shape = [widths(args.encoder)[0]]
        encoder = mlp(widths(args.encoder), True)
        enc = widths(args.encoder)
    model = nn.Sequential(encoder, mlp(proj, False) if proj else nn.Identity())
    model.train()
    forward = torch.compile(model) if args.compile else model
    if args.compile:
        enc += ", torch.compile"
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = LARS(model.parameters(), lr=0.2, weight_decay=1e-6,
                   weight_decay_filter=exclude_bias_and_norm, lars_adaptation_filter=exclude_bias_and_norm)
    x1 = torch.randn(args.batch, *shape)
    x2 = torch.randn(args.batch, *shape)
    if args.encoder == "resnet" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x1 = x1.contiguous(memory_format=torch.channels_last)
        x2 = x2.contiguous(memory_format=torch.channels_last)

    times = []
    loss = float("nan")
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        out = vicreg(forward(x1), forward(x2))
        out.backward()
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
        opt.step()
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
        loss = out.item()
    med, mn = statistics.median(times), min(times)
    sps = args.batch / (med / 1e3)
    print(f"peer             torch {torch.__version__}, {'torch.compile' if args.compile else 'eager'}, " + ("SGD" if args.optimizer == "sgd" else "LARS (VICReg reference)"))
    print(f"threads          torch.set_num_threads({torch.get_num_threads()}), interop 1, OMP/MKL/OPENBLAS_NUM_THREADS={args.threads}")
    print(f"model            encoder {enc} projector {proj}, {args.batch} rows x 2 views")
    print(f"threads (system) user {os.times().user:.1f} s, system {os.times().system:.1f} s in this process")
    print(f"ms/step          median {med:.1f}, min {mn:.1f} over {args.steps} steps")
    print(f"samples/s        {sps:.0f}")
    print(f"loss             {loss}")
    if args.json:
        print(json.dumps({"peer": "torch", "version": torch.__version__, "optimizer": args.optimizer,
                          "threads": torch.get_num_threads(), "encoder": enc, "projector": proj,
                          "batch": args.batch, "steps": args.steps, "medianMilliseconds": med,
                          "minimumMilliseconds": mn, "samplesPerSecond": sps, "loss": loss}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
