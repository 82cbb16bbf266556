"""Epoch time of pyro_vae's training path against a hand-written PyTorch VAE.

Same networks (784-400-50 MLP, softplus), same initial weights, same batches
(binarized MNIST, batch 256), same optimizer (Adam, lr 1e-3), same objective
(the single-sample Monte Carlo ELBO, Trace_ELBO), in one run. The contenders take
turns in short rounds of steps on the same batches (who goes first alternates), and
the ratio reported is the median over rounds of each round's ratio of times, so that
load from elsewhere that comes and goes slows both alike; s/epoch is each one's median
time per step times the steps of an epoch.

    python benchmarks/train_speed.py --data ../shared/data --epochs 3

Also timed, for reference: Pyro's own example style (``pyro.infer.SVI`` with
``pyro.optim.Adam`` and ``Trace_ELBO``) on the same model and guide; NumPyro's
jit-compiled ``numpyro.infer.SVI`` (``Trace_ELBO``, ``numpyro.optim.Adam``, one
particle) on the same network with the same initial weights and batches, when jax and
numpyro are installed (``pip install -e .[bench]``); and the Trainer with each of its
speed options on its own (``--no-levers`` skips them): a foreach Adam, a fused Adam
(``fused=True``), compiled networks (``compile=True``); and the traced step
(``traced=True``: ``CompiledTrace_ELBO``, alone and with ``fused=True``; the latter with
each of its measured choices forced either way: aten's or oneDNN's matrix products, the
log1p-free rewrite off or on; ``--no-traced`` skips them), with the choices the timing made
printed after the table. The warm-up column is the
first (uncounted) round's time over its steps at the median rate (compilation, first-call
allocations), plus, for a traced trainer, the time to build it, when it traces and
compiles the first batch shape.
"""

import argparse
import copy
import functools
import json
import math
import statistics
import time

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import build_vae, load_dataset
from pyro_vae.objectives import CompiledTrace_ELBO
from pyro_vae.ops import kernels
from pyro_vae.ops.graph_passes import onednn_available
from pyro_vae.train.trainer import Trainer

LOG_2PI = math.log(2 * math.pi)


def hand_written_step(encoder, decoder, optimizer, x):
    """A plain PyTorch VAE step: z = μ + σ ε, loss = −mean[log p(x|z) + log p(z) − log q(z|x)]."""
    loc, log_var = encoder(x)
    eps = torch.randn_like(loc)
    z = loc + torch.exp(0.5 * log_var) * eps
    log_px = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + LOG_2PI + log_var).sum(-1)
    loss = -(log_px + log_pz - log_qz).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def breakdown_steps(build, n, device):
    """Two steps between the hand-written loop and the Trainer, each on its own copy of the
    same initial network: the VAE's own distributions (Pyro's Normal and Bernoulli for
    guide, prior, likelihood) without Pyro's handlers, and Pyro's traces of ``vae.guide``
    and ``vae.model`` with the log-densities summed by hand instead of by ``Trace_ELBO``.
    What separates them from each other and from the Trainer is the cost of the
    distribution objects, of Pyro's effect handlers, and of the ELBO class."""
    steps = {}
    for name, step in (("distributions, no Pyro", _bare_step), ("Pyro traces, no ELBO class", _traced_step)):
        torch.manual_seed(0)
        vae = build((1, 28, 28), z_dim=50, hidden_dims=(400,)).to(device)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        steps[name] = functools.partial(step, vae, opt, n)
    return steps


def _bare_step(vae, opt, n, x):
    """log w = log p(x|z) + log p(z) − log q(z|x) from the VAE's own distribution objects
    (guide, prior, likelihood), z = rsample of q; no Pyro primitive, handler or ELBO. Their
    argument and support checks are off, as in the Trainer's steps after its first."""
    with pyro.validation_enabled(False):
        q = vae.q(x)
        z = q.rsample()
        log_w = vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior(x.shape[:1]).log_prob(z) - q.log_prob(z)
    return _sgd_step(opt, -log_w.mean())


def _traced_step(vae, opt, n, x):
    """The same log w from Pyro's traces of ``vae.guide`` and of ``vae.model`` replayed
    against it (what ``Trace_ELBO`` builds), summed here instead of by the ELBO class."""
    with pyro.validation_enabled(False):
        guide = poutine.trace(vae.guide).get_trace(x, num_data=n)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, num_data=n)
    z = guide.nodes["z"]["value"]
    log_w = model.nodes["x"]["fn"].log_prob(x) + model.nodes["z"]["fn"].log_prob(z) - guide.nodes["z"]["fn"].log_prob(z)
    return _sgd_step(opt, -log_w.mean())


def _sgd_step(opt, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def numpyro_step(enc, dec, n, x0):
    """NumPyro's SVI step for the same VAE: the model and guide below, written as NumPyro's
    examples write them, with the initial weights of ``enc``/``dec`` (the torch networks'
    copies), ``Trace_ELBO`` with one particle and ``numpyro.optim.Adam(1e-3)``, the update
    jit-compiled (``jax.jit(svi.update)``; each batch shape is traced once). The step takes
    the torch batch (on CPU a view as a NumPy array, copied to a JAX array; on a GPU shared
    with JAX through DLPack, no copy) and returns −ELBO per data point, which waits for the
    step to finish. None, with a one-line note, when jax or numpyro is missing, or when the
    batch is on a GPU that JAX does not see."""
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as ndist
        from numpyro import handlers
        from numpyro.infer import SVI as NSVI
        from numpyro.infer import Trace_ELBO as NTrace_ELBO
    except ImportError as e:
        print(f"NumPyro contender skipped: {e.name} is not installed (pip install -e .[bench])")
        return None

    if x0.is_cuda:
        try:
            jax.dlpack.from_dlpack(x0.contiguous())
        except Exception as e:  # JAX without CUDA
            print(
                f"NumPyro contender skipped: JAX cannot take the GPU batch ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120]})"
            )
            return None

        def to_jax(x):
            return jax.dlpack.from_dlpack(x.contiguous())
    else:

        def to_jax(x):
            return jnp.asarray(x.numpy())

    def linear(m):
        return jnp.asarray(m.weight.detach().cpu().numpy().T), jnp.asarray(m.bias.detach().cpu().numpy())

    init = {}
    for prefix, layers in (("enc", (enc.body[0][0], enc.head)), ("dec", (dec.net[0], dec.net[2]))):
        for i, m in enumerate(layers):
            init[f"{prefix}.w{i}"], init[f"{prefix}.b{i}"] = linear(m)
    z_dim = enc.out_dims[0]

    def mlp(prefix, h):
        w0, b0 = (
            numpyro.param(f"{prefix}.w0", init[f"{prefix}.w0"]),
            numpyro.param(f"{prefix}.b0", init[f"{prefix}.b0"]),
        )
        w1, b1 = (
            numpyro.param(f"{prefix}.w1", init[f"{prefix}.w1"]),
            numpyro.param(f"{prefix}.b1", init[f"{prefix}.b1"]),
        )
        return jax.nn.softplus(h @ w0 + b0) @ w1 + b1

    def model(x):
        b = x.shape[0]
        with numpyro.plate("data", b), handlers.scale(scale=n / b):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros((b, z_dim)), 1.0).to_event(1))
            numpyro.sample("x", ndist.Bernoulli(logits=mlp("dec", z)).to_event(1), obs=x)

    def guide(x):
        b = x.shape[0]
        out = mlp("enc", x)
        loc, log_var = out[:, :z_dim], out[:, z_dim:]
        with numpyro.plate("data", b), handlers.scale(scale=n / b):
            numpyro.sample("z", ndist.Normal(loc, jnp.exp(0.5 * log_var)).to_event(1))

    svi = NSVI(model, guide, numpyro.optim.Adam(1e-3), NTrace_ELBO())
    state = [svi.init(jax.random.PRNGKey(0), to_jax(x0))]
    update = jax.jit(svi.update)

    def step(x):
        state[0], loss = update(state[0], to_jax(x))
        return float(loss) / n

    return step


#: the Trainer's speed options, each on its own: (name, Trainer keywords, foreach Adam)
LEVERS = (
    ("pyro_vae Trainer, foreach Adam", {}, True),
    ("pyro_vae Trainer, fused=True", {"fused": True}, False),
    ("pyro_vae Trainer, compile=True", {"compile": True}, False),
    ("pyro_vae Trainer, fused+compile", {"fused": True, "compile": True}, False),
)
#: the traced step (``traced=True``: :class:`~pyro_vae.objectives.CompiledTrace_ELBO`, its
#: kernels and rewrite chosen by timing), alone and with the fused Adam, and (benchmark
#: only) each choice forced either way: (name, Trainer keywords, CompiledTrace_ELBO keywords)
TRACED = (
    ("pyro_vae Trainer, traced=True", {"traced": True}, None),
    ("pyro_vae Trainer, traced+fused", {"traced": True, "fused": True}, None),
    ("traced+fused, aten matmuls", {"fused": True}, {"onednn": False}),
    ("traced+fused, oneDNN matmuls", {"fused": True}, {"onednn": True}),
    ("traced+fused, no log1p rewrite", {"fused": True}, {"rewrite": False}),
    ("traced+fused, log1p rewrite", {"fused": True}, {"rewrite": True}),
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per contender")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--round-steps", type=int, default=20, help="steps per contender per round")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (every contender, NumPyro's JAX too)")
    p.add_argument("--no-svi", action="store_true", help="skip the pyro.optim/SVI reference")
    p.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro contender")
    p.add_argument("--no-levers", action="store_true", help="skip the Trainer's speed options")
    p.add_argument("--no-traced", action="store_true", help="skip the traced step (traced=True)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every round's s/step per contender")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the package's distributions without Pyro, Pyro's traces without an ELBO "
        "class, and the hand-written loop with fused Adam: where the Trainer's remaining time over the "
        "hand-written loop goes",
    )
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    train = load_dataset("binarized-mnist", "train", root=args.data)
    if args.limit:
        train.x = train.x[: args.limit]
    train = train.to(device)
    torch.manual_seed(0)
    vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,)).to(device)
    enc, dec = copy.deepcopy(vae.q.encoder), copy.deepcopy(vae.decoder)
    hand_opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    trainer = Trainer(vae, train, objective="elbo", lr=1e-3, batch_size=args.batch_size, seed=0, device=device)

    n = len(train)
    contenders = {
        "hand-written PyTorch": lambda x: hand_written_step(enc, dec, hand_opt, x),
        "pyro_vae Trainer": lambda x: trainer.step(x),
    }
    if args.breakdown:
        for name, step in breakdown_steps(build_vae, n, device).items():
            contenders[name] = step
        # the like-for-like reference of the Trainer's fused=True lever: the same loop, fused Adam
        fused_enc, fused_dec = copy.deepcopy(enc), copy.deepcopy(dec)
        fused_opt = torch.optim.Adam(list(fused_enc.parameters()) + list(fused_dec.parameters()), lr=1e-3, fused=True)
        contenders["hand-written, fused Adam"] = lambda x: hand_written_step(fused_enc, fused_dec, fused_opt, x)
    if not args.no_levers:
        for name, kwargs, foreach in LEVERS:
            torch.manual_seed(0)  # the same initial weights as the others
            lever_vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,))
            t = Trainer(
                lever_vae, train, objective="elbo", lr=1e-3, batch_size=args.batch_size, seed=0, device=device, **kwargs
            )
            if foreach:
                t.optimizer = torch.optim.Adam(lever_vae.parameters(), lr=1e-3, foreach=True)
            contenders[name] = t.step
    built = {}  # seconds to build a traced trainer, which traces its first batch shape
    if not args.no_traced:
        for name, kwargs, forced in TRACED:
            if forced and forced.get("onednn") and not (device.type == "cpu" and onednn_available()):
                continue  # no oneDNN here: the same as aten's products
            torch.manual_seed(0)
            traced_vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,))
            if forced:
                kwargs = dict(kwargs, objective=CompiledTrace_ELBO(max_plate_nesting=1, modules=[traced_vae], **forced))
            t0 = time.perf_counter()
            t = Trainer(
                traced_vae,
                train,
                **{"objective": "elbo", **kwargs},
                lr=1e-3,
                batch_size=args.batch_size,
                seed=0,
                device=device,
            )
            built[name] = time.perf_counter() - t0  # the first batch shape traced (kernels timed) and compiled
            contenders[name] = t.step
    if not args.no_numpyro:
        step = numpyro_step(enc, dec, n, train.x[: args.batch_size])
        if step is not None:
            contenders["NumPyro SVI, jit"] = step
    if not args.no_svi:
        torch.manual_seed(0)  # the same initial weights as the others
        svi_vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,)).to(device)
        pyro.clear_param_store()
        svi = SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        contenders["Pyro SVI + pyro.optim.Adam"] = lambda x: svi.step(x, num_data=n) / n

    # Rounds of `round_steps` steps, the contenders taking turns on the same batches; a
    # burst of load from elsewhere then hits one round, not one contender's whole epoch.
    steps_per_epoch = math.ceil(n / args.batch_size)
    per_step = {k: [] for k in contenders}
    warmup = {}
    losses = {k: [] for k in contenders}
    generator = torch.Generator().manual_seed(0)
    batches = []
    rounds = args.epochs * steps_per_epoch // args.round_steps
    for r in range(rounds + 1):  # round 0 warms up and is not counted
        round_batches = []
        while len(round_batches) < args.round_steps:
            if not batches:
                batches = [x for x, _ in train.batches(args.batch_size, generator=generator)]
            round_batches.append(batches.pop())
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]  # no one always goes first
        for name in order:
            t0 = time.perf_counter()
            for x in round_batches:
                losses[name].append(contenders[name](x))
            if r > 0:
                per_step[name].append((time.perf_counter() - t0) / len(round_batches))
            else:
                warmup[name] = time.perf_counter() - t0
    times = {k: [statistics.median(v) * steps_per_epoch] for k, v in per_step.items()}
    losses = {k: statistics.mean(v[-steps_per_epoch:]) for k, v in losses.items()}
    # paired: each round's ratio compares the contenders over the same seconds of machine load
    paired = {
        k: statistics.median(a / b for a, b in zip(v, per_step["hand-written PyTorch"])) for k, v in per_step.items()
    }
    spread = {k: _quartiles([a / b for a, b in zip(v, per_step["hand-written PyTorch"])]) for k, v in per_step.items()}
    vs_trainer = {
        k: statistics.median(a / b for a, b in zip(v, per_step["pyro_vae Trainer"])) for k, v in per_step.items()
    }
    np_name = "NumPyro SVI, jit"
    vs_numpyro = (
        {k: statistics.median(a / b for a, b in zip(v, per_step[np_name])) for k, v in per_step.items()}
        if np_name in per_step
        else None
    )
    print(
        f"binarized MNIST, {len(train)} images, batch {args.batch_size}, 784-400-50 MLP, device {device}, "
        f"{torch.get_num_threads()} threads, {args.epochs} epochs per contender in {rounds} alternating rounds "
        f"of {args.round_steps} steps; s/epoch = median s/step × {steps_per_epoch} steps"
    )
    print(
        "paired: median over rounds of each round's time ratio to the hand-written loop [quartiles]; "
        "/Trainer, /NumPyro: the same against the plain Trainer, NumPyro; "
        "warm-up: round 0's time beyond its steps at the median rate, plus a traced trainer's build"
    )
    print(
        f"{'contender':32s} {'s/epoch':>8s} {'paired':>7s} {'[quartiles]':>13s} {'/Trainer':>8s} {'/NumPyro':>8s} "
        f"{'warm-up s':>9s} {'-ELBO, last epoch':>18s}"
    )
    for name in contenders:
        med = statistics.median(times[name])
        extra = built.get(name, 0.0) + warmup[name] - args.round_steps * statistics.median(per_step[name])
        q1, q3 = spread[name]
        vs = f"{vs_numpyro[name]:8.3f}" if vs_numpyro else f"{'-':>8s}"
        print(
            f"{name:32s} {med:8.3f} {paired[name]:7.3f} [{q1:5.3f},{q3:5.3f}] {vs_trainer[name]:8.3f} {vs} {extra:9.2f} "
            f"{losses[name]:18.2f}"
        )
    ratio = paired["pyro_vae Trainer"]
    print(f"ratio pyro_vae / hand-written (median of the {rounds} rounds' ratios): {ratio:.3f}")
    if vs_numpyro:
        fastest = min((k for k in contenders if k.startswith("pyro_vae Trainer")), key=lambda k: vs_numpyro[k])
        print(f"fastest Trainer setting: {fastest}, {vs_numpyro[fastest]:.3f}× NumPyro (paired median)")
    if not args.no_traced:
        print(_kernel_choices())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "seconds_per_step": per_step,
                    "warmup_round_seconds": warmup,
                    "round_steps": args.round_steps,
                    "threads": torch.get_num_threads(),
                },
                f,
                indent=1,
            )
    return ratio


def _kernel_choices():
    """What the traced graphs of this run were given, by the timings that chose it."""
    lines = ["kernels chosen by timing on this machine (pyro_vae.ops.kernels, median seconds):"]
    for shapes, c in kernels.choices()["matmul"].items():
        t = c["seconds"]
        lines.append(
            f"  {len(shapes)} products: {c['kernel']} (aten {t['aten'] * 1e3:.3f} ms, "
            f"oneDNN {t['onednn'] * 1e3:.3f} ms)"
        )
    for c in kernels.choices()["log1p_free"].values():
        t = c["seconds"]
        lines.append(
            f"  log1p-free rewrite: {'applied' if c['rewrite'] else 'not applied'} (plain graph "
            f"{t['plain'] * 1e3:.3f} ms, rewritten {t['log1p_free'] * 1e3:.3f} ms)"
        )
    return "\n".join(lines)


def _quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q[0], q[2]


if __name__ == "__main__":
    main()
