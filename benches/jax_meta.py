#!/usr/bin/env python3
"""The mixed-mode meta-gradient of docs/meta-gradients.md, written in JAX, timed
against this crate's on the same machine (optional: never needed to build or test the
crate).

What it computes is what `MetaRequest::run` computes in `Mode::Mixed` for the DataRater
problem of `examples/memory_vs_bptt.rs`, on the same shapes:

- inner model: a byte-level causal pre-LN transformer (vocabulary 256, learned
  positions, GELU in its tanh form, MLP 4 d), per-example loss the mean next-byte
  cross-entropy over the sequence's `seq - 1` predictions;
- rater: a bidirectional transformer of the same kind, mean-pooled to one score per
  sequence; the example weights are the softmax over the batch of the scores;
- T inner steps of Adam (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, eps_root 1e-12) on
  `L_t = sum_i w_i l_i`; outer loss `J` the mean loss of a held-out batch;
- the meta-gradient `dJ/deta` by the adjoint recursion: a forward sweep keeping every
  `g_t` (and, here, every state: JAX gets the cheaper side of that trade); then for
  t = T-1 .. 0 the VJP of the Adam update, ONE forward-over-reverse pass (`jax.jvp`
  of `jax.grad`, weights held constant) giving `H_t g_bar` and the per-example
  tangents `d_i`, and one first-order backward pass through the rater for
  `grad_eta sum_i w_i(eta) d_i`; step 0 needs only the forward-mode `d_i`.

Every step function is `jax.jit`-compiled; the timed runs come after a warm-up run that
compiles them (and leaves XLA's buffers allocated). The crate's side gets a warm-up too
(`--warmup`: one untimed meta-gradient in the same process before the timed one), so
neither side's time includes a first touch of its memory. Random data (the shapes are
what matters for time).

Setup (once):

    python3 -m venv /work/venv-jax && /work/venv-jax/bin/pip install jax jaxlib

Run JAX alone, or alternating with the crate's own (the same meta-gradient through
`examples/memory_vs_bptt.rs`, its printed seconds for `--modes mixed`):

    cargo build --release --example memory_vs_bptt
    /work/venv-jax/bin/python benches/jax_meta.py --workload reference --reps 5 \
        --ours target/release/examples/memory_vs_bptt
    /work/venv-jax/bin/python benches/jax_meta.py --workload scale --reps 3 \
        --ours target/release/examples/memory_vs_bptt

It prints each run's seconds and the medians. `--check` only checks the JAX side's
meta-gradient against `jax.grad` of the unrolled window (a tiny workload, f64). f32; JAX uses all the cores it sees
(XLA's CPU thread pool), ours rayon's default (all cores).
"""

import argparse
import re
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

WORKLOADS = {
    # d, layers, heads, seq, batch, rater d, rater layers, rater heads
    "reference": dict(d=64, layers=2, heads=4, seq=128, batch=16, rd=32, rl=1, rh=2),
    "scale": dict(d=256, layers=4, heads=4, seq=256, batch=8, rd=64, rl=1, rh=2),
}

LN_EPS = 1e-5
LR, B1, B2, EPS, EPS_ROOT = 1e-3, 0.9, 0.999, 1e-8, 1e-12


def init_transformer(key, d, layers, seq, out):
    keys = iter(jax.random.split(key, 8 * layers + 4))
    normal = lambda shape, std: std * jax.random.normal(next(keys), shape, jnp.float32)
    std = 1.0 / np.sqrt(d)
    p = {
        "tok": normal((256, d), 0.02),
        "pos": normal((seq, d), 0.02),
        "layers": [],
        "lnf": (jnp.ones(d), jnp.zeros(d)),
        "head": (normal((d, out), std), jnp.zeros(out)),
    }
    for _ in range(layers):
        lin = lambda i, o, s: (normal((i, o), s), jnp.zeros(o))
        p["layers"].append(
            {
                "ln1": (jnp.ones(d), jnp.zeros(d)),
                "q": lin(d, d, std),
                "k": lin(d, d, std),
                "v": lin(d, d, std),
                "o": lin(d, d, std),
                "ln2": (jnp.ones(d), jnp.zeros(d)),
                "fc": lin(d, 4 * d, std),
                "proj": lin(4 * d, d, std),
            }
        )
    return p


def layer_norm(x, gb):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + LN_EPS) * gb[0] + gb[1]


def linear(x, wb):
    return x @ wb[0] + wb[1]


def trunk(p, tokens, heads, causal):
    b, t = tokens.shape
    x = p["tok"][tokens] + p["pos"][:t]
    d = x.shape[-1]
    dh = d // heads
    mask = jnp.tril(jnp.ones((t, t), bool))
    for lp in p["layers"]:
        h = layer_norm(x, lp["ln1"])
        split = lambda y: y.reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
        q = split(linear(h, lp["q"]) / np.sqrt(dh))
        k, v = split(linear(h, lp["k"])), split(linear(h, lp["v"]))
        s = q @ k.transpose(0, 1, 3, 2)
        if causal:
            s = jnp.where(mask, s, -jnp.inf)
        o = (jax.nn.softmax(s, -1) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        x = x + linear(o, lp["o"])
        h = layer_norm(x, lp["ln2"])
        x = x + linear(jax.nn.gelu(linear(h, lp["fc"]), approximate=True), lp["proj"])
    return layer_norm(x, p["lnf"])


def per_example_loss(theta, tokens, heads):
    x, y = tokens[:, :-1], tokens[:, 1:]
    logits = linear(trunk(theta, x, heads, True), theta["head"])
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
    return ce.mean(1)


def rater_weights(eta, tokens, heads):
    h = trunk(eta, tokens, heads, False).mean(1)
    return jax.nn.softmax(linear(h, eta["head"])[:, 0])


def adam(theta, state, g, step):
    """One Adam step (`step` counts from 1), as src/optim/adam.rs."""
    m, v = state
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
    c1, c2 = 1.0 / (1.0 - B1**step), 1.0 / (1.0 - B2**step)
    theta = jax.tree.map(
        lambda p, m, v: p - LR * (m * c1 / (jnp.sqrt(v * c2 + EPS_ROOT) + EPS)), theta, m, v
    )
    return theta, (m, v)


def make_steps(lm_heads, rater_heads):
    pel = lambda th, x: per_example_loss(th, x, lm_heads)
    weights = lambda eta, x: rater_weights(eta, x, rater_heads)

    @jax.jit
    def forward_step(theta, state, eta, x, step):
        w = weights(eta, x)
        g = jax.grad(lambda th: jnp.sum(w * pel(th, x)))(theta)
        theta2, state2 = adam(theta, state, g, step)
        return theta2, state2, g, w

    @jax.jit
    def outer(theta, x):
        return jax.value_and_grad(lambda th: pel(th, x).mean())(theta)

    @jax.jit
    def backward_step(theta, state, g, w, eta, x, step, theta_bar, state_bar, eta_bar):
        _, pull = jax.vjp(lambda th, s, g: adam(th, s, g, step), theta, state, g)
        theta_bar1, state_bar1, g_bar = pull((theta_bar, state_bar))

        def grad_and_losses(th):
            return jax.grad(lambda th: (lambda l: (jnp.sum(w * l), l))(pel(th, x)), has_aux=True)(th)

        _, (hg, d) = jax.jvp(grad_and_losses, (theta,), (g_bar,))
        theta_bar1 = jax.tree.map(jnp.add, theta_bar1, hg)
        m_g = jax.grad(lambda e: jnp.sum(weights(e, x) * d))(eta)
        return theta_bar1, state_bar1, jax.tree.map(jnp.add, eta_bar, m_g)

    @jax.jit
    def first_step(theta, state, g, eta, x, theta_bar, state_bar, eta_bar):
        _, pull = jax.vjp(lambda th, s, g: adam(th, s, g, 1.0), theta, state, g)
        _, _, g_bar = pull((theta_bar, state_bar))
        _, d = jax.jvp(lambda th: pel(th, x), (theta,), (g_bar,))
        return jax.tree.map(jnp.add, eta_bar, jax.grad(lambda e: jnp.sum(weights(e, x) * d))(eta))

    def unrolled(theta0, eta, batches, held):
        """J(eta) through the whole window, for `jax.grad` (the --check reference)."""
        theta, state = theta0, jax.tree.map(jnp.zeros_like, (theta0, theta0))
        for t, x in enumerate(batches):
            w = weights(eta, x)
            g = jax.grad(lambda th: jnp.sum(w * pel(th, x)))(theta)
            theta, state = adam(theta, state, g, float(t + 1))
        return pel(theta, held).mean()

    def meta_gradient(theta0, eta, batches, held):
        state = jax.tree.map(jnp.zeros_like, (theta0, theta0))
        thetas, states, gs, ws = [theta0], [state], [], []
        for t, x in enumerate(batches):
            th, st, g, w = forward_step(thetas[-1], states[-1], eta, x, float(t + 1))
            thetas.append(th)
            states.append(st)
            gs.append(g)
            ws.append(w)
        j, theta_bar = outer(thetas[-1], held)
        state_bar = jax.tree.map(jnp.zeros_like, states[-1])
        eta_bar = jax.tree.map(jnp.zeros_like, eta)
        for t in range(len(batches) - 1, 0, -1):
            theta_bar, state_bar, eta_bar = backward_step(
                thetas[t], states[t], gs[t], ws[t], eta, batches[t], float(t + 1),
                theta_bar, state_bar, eta_bar,
            )
        eta_bar = first_step(thetas[0], states[0], gs[0], eta, batches[0], theta_bar, state_bar, eta_bar)
        return jax.block_until_ready((j, eta_bar))

    meta_gradient.unrolled = unrolled
    return meta_gradient


def check():
    """The adjoint recursion above against `jax.grad` of the unrolled window, on a tiny
    workload in f64."""
    jax.config.update("jax_enable_x64", True)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    cast = lambda p: jax.tree.map(lambda a: a.astype(jnp.float64), p)
    theta = cast(init_transformer(k1, 16, 1, 8, 256))
    eta = cast(init_transformer(k2, 8, 1, 8, 1))
    data = jax.random.randint(k3, (4, 4, 8), 0, 256)
    batches, held = list(data[:-1]), data[-1]
    meta_gradient = make_steps(2, 2)
    _, mixed = meta_gradient(theta, eta, batches, held)
    ref = jax.grad(lambda e: meta_gradient.unrolled(theta, e, batches, held))(eta)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(mixed), jax.tree.leaves(ref)))
    den = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(ref))
    rel = (num / den) ** 0.5
    print(f"check: mixed-mode vs jax.grad of the unrolled window, relative error {rel:.2e}")
    assert rel < 1e-8, rel


def ours_seconds(binary, w, steps):
    """One run of the crate's meta-gradient: the seconds `memory_vs_bptt` prints."""
    cmd = [
        binary, "--d", str(w["d"]), "--layers", str(w["layers"]), "--heads", str(w["heads"]),
        "--seq", str(w["seq"]), "--batch", str(w["batch"]), "--rater-d", str(w["rd"]),
        "--rater-layers", str(w["rl"]), "--rater-heads", str(w["rh"]), "--steps", str(steps),
        "--modes", "mixed", "--reps", "1", "--no-check", "--warmup",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = next(l for l in out.splitlines() if re.match(rf"\s*{steps} \|", l))
    return float(row.split("|")[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=WORKLOADS, default="reference")
    ap.add_argument("--steps", type=int, default=16, help="window length T")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ours", help="path of the crate's memory_vs_bptt binary, run alternately")
    ap.add_argument("--check", action="store_true", help="only check the meta-gradient (tiny, f64)")
    args = ap.parse_args()
    if args.check:
        return check()
    w = WORKLOADS[args.workload]
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    theta = init_transformer(k1, w["d"], w["layers"], w["seq"], 256)
    eta = init_transformer(k2, w["rd"], w["rl"], w["seq"], 1)
    data = jax.random.randint(k3, (args.steps + 1, w["batch"], w["seq"]), 0, 256)
    batches, held = list(data[:-1]), data[-1]
    meta_gradient = make_steps(w["heads"], w["rh"])
    print(f"jax {jax.__version__} on {jax.devices()}; workload {args.workload} {w}; T = {args.steps}; f32")
    t = time.perf_counter()
    meta_gradient(theta, eta, batches, held)
    print(f"warm-up (compiles): {time.perf_counter() - t:.2f} s")
    jax_s, ours_s = [], []
    for rep in range(args.reps):
        t = time.perf_counter()
        meta_gradient(theta, eta, batches, held)
        jax_s.append(time.perf_counter() - t)
        line = f"rep {rep}: jax {jax_s[-1]:.3f} s"
        if args.ours:
            ours_s.append(ours_seconds(args.ours, w, args.steps))
            line += f", ours {ours_s[-1]:.3f} s"
        print(line, flush=True)
    jm = statistics.median(jax_s)
    print(f"median: jax {jm:.3f} s (range {min(jax_s):.3f}-{max(jax_s):.3f})")
    if ours_s:
        om = statistics.median(ours_s)
        print(f"median: ours {om:.3f} s (range {min(ours_s):.3f}-{max(ours_s):.3f}); ours / jax = {om / jm:.2f}")


if __name__ == "__main__":
    main()
