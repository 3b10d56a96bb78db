#!/usr/bin/env python3
"""JAX reference for `anticollapse bench step` (VICReg, float32, CPU).

One timed step = forward of two views of `--batch` random rows through the same
encoder + projector MLP (BatchNorm1d in training mode with per-view batch statistics,
eps 1e-5, then ReLU, between layers; last encoder layer linear; last projector layer
without bias), the VICReg loss (25 invariance, 25 variance, 1 covariance), backward,
the gradient norm, and a hand-written LARS update as in the VICReg reference
(lr 0.2, weight decay 1e-6, momentum 0.9, eta 0.001; biases and BN parameters excluded
from weight decay and the trust ratio). The whole step is one jitted function.
BN running statistics are not tracked (they cost O(width) and are unused in timing).
"""
import argparse
import os
import sys


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="784,1024,1024")
    p.add_argument("--projector", default="1024,2048,2048")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON line too")
    return p.parse_args()


args = parse()
# Threads must be fixed before jax is imported.
flags = os.environ.get("XLA_FLAGS", "")
flags += (" --xla_cpu_multi_thread_eigen=true"
          f" intra_op_parallelism_threads={args.threads}"
          " --xla_force_host_platform_device_count=1")
os.environ["XLA_FLAGS"] = flags.strip()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")

LR, WD, MOMENTUM, ETA = 0.2, 1e-6, 0.9, 0.001
EPS_BN = 1e-5


def widths(text):
    return [] if text in ("", "none") else [int(w) for w in text.split(",")]


def init_mlp(key, ws, last_bias):
    """Linear layers (PyTorch default uniform init); BN (gamma 1, beta 0) after every layer but the last."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(ws, ws[1:])):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / n_in ** 0.5
        layer = {"w": jax.random.uniform(kw, (n_out, n_in), jnp.float32, -bound, bound)}
        last = i == len(ws) - 2
        if not last or last_bias:
            layer["b"] = jax.random.uniform(kb, (n_out,), jnp.float32, -bound, bound)
        if not last:
            layer["gamma"] = jnp.ones((n_out,), jnp.float32)
            layer["beta"] = jnp.zeros((n_out,), jnp.float32)
        layers.append(layer)
    return layers


def mlp(layers, x):
    for layer in layers:
        x = x @ layer["w"].T
        if "b" in layer:
            x = x + layer["b"]
        if "gamma" in layer:
            mean = x.mean(0)
            var = jnp.mean(jnp.square(x - mean), 0)  # biased, as BatchNorm1d normalises
            x = (x - mean) * jax.lax.rsqrt(var + EPS_BN) * layer["gamma"] + layer["beta"]
            x = jax.nn.relu(x)
    return x


def vicreg(x, y):
    b, d = x.shape
    repr_loss = jnp.mean(jnp.square(x - y))
    x = x - x.mean(0)
    y = y - y.mean(0)
    std_x = jnp.sqrt(jnp.sum(x * x, 0) / (b - 1) + 1e-4)
    std_y = jnp.sqrt(jnp.sum(y * y, 0) / (b - 1) + 1e-4)
    std_loss = jnp.mean(jax.nn.relu(1 - std_x)) / 2 + jnp.mean(jax.nn.relu(1 - std_y)) / 2
    off = 1.0 - jnp.eye(d, dtype=x.dtype)
    cov_x = (x.T @ x) / (b - 1)
    cov_y = (y.T @ y) / (b - 1)
    cov_loss = jnp.sum(jnp.square(cov_x * off)) / d + jnp.sum(jnp.square(cov_y * off)) / d
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


def loss_fn(params, x1, x2):
    def net(x):
        return mlp(params["projector"], mlp(params["encoder"], x))
    return vicreg(net(x1), net(x2))


def lars(params, grads, mu):
    def update(path, p, g, m):
        name = path[-1].key
        if name == "w":  # weights: weight decay and trust ratio
            d = g + WD * p
            pn, dn = jnp.linalg.norm(p), jnp.linalg.norm(d)
            q = jnp.where(pn > 0, jnp.where(dn > 0, ETA * pn / dn, 1.0), 1.0)
            d = d * q
        else:
            d = g
        m = MOMENTUM * m + d
        return p - LR * m, m
    out = jax.tree_util.tree_map_with_path(update, params, grads, mu)
    new_p = jax.tree_util.tree_map(lambda t: t[0], out, is_leaf=lambda t: isinstance(t, tuple))
    new_m = jax.tree_util.tree_map(lambda t: t[1], out, is_leaf=lambda t: isinstance(t, tuple))
    return new_p, new_m


def _step(params, mu, x1, x2):
    loss, grads = jax.value_and_grad(loss_fn)(params, x1, x2)
    gnorm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads)))
    params, mu = lars(params, grads, mu)
    return params, mu, loss, gnorm


step = jax.jit(_step, donate_argnums=(0, 1))


def main():
    enc, proj = widths(args.encoder), widths(args.projector)
    key = jax.random.PRNGKey(args.seed)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {"encoder": init_mlp(k1, enc, True), "projector": init_mlp(k2, proj, False) if proj else []}
    mu = jax.tree_util.tree_map(jnp.zeros_like, params)
    x1 = jax.random.normal(k3, (args.batch, enc[0]), jnp.float32)
    x2 = jax.random.normal(k4, (args.batch, enc[0]), jnp.float32)

    times = []
    loss = float("nan")
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        params, mu, loss_, gnorm = step(params, mu, x1, x2)
        loss_.block_until_ready()
        jax.block_until_ready(params)
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
        loss = float(loss_)
    med, mn = statistics.median(times), min(times)
    sps = args.batch / (med / 1e3)
    print(f"peer             jax {jax.__version__} (jaxlib {jax.lib.__version__}), jit, LARS (hand-written)")
    print(f"threads          {args.threads} (XLA_FLAGS={os.environ['XLA_FLAGS']!r}, OMP/OPENBLAS/MKL_NUM_THREADS={args.threads})")
    print(f"devices          {jax.devices()}")
    print(f"model            encoder {enc} projector {proj}, {args.batch} rows x 2 views")
    print(f"ms/step          median {med:.1f}, min {mn:.1f} over {args.steps} steps")
    print(f"samples/s        {sps:.0f}")
    print(f"loss             {loss}")
    if args.json:
        print(json.dumps({"peer": "jax", "version": jax.__version__, "optimizer": "LARS", "threads": args.threads,
                          "encoder": enc, "projector": proj, "batch": args.batch, "steps": args.steps,
                          "medianMilliseconds": med, "minimumMilliseconds": mn, "samplesPerSecond": sps,
                          "loss": loss}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
