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
``pyro.optim.Adam`` and ``Trace_ELBO``) on the same model and guide.
"""

import argparse
import copy
import functools
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
from pyro_vae.training import Trainer

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


def breakdown_steps(build, n):
    """Two steps between the hand-written loop and the Trainer, each on its own copy of the
    same initial network: the VAE's own distributions (Pyro's Normal and Bernoulli for
    guide, prior, likelihood) without Pyro's handlers, and Pyro's traces of ``vae.guide``
    and ``vae.model`` with the log-densities summed by hand instead of by ``Trace_ELBO``.
    What separates them from each other and from the Trainer is the cost of the
    distribution objects, of Pyro's effect handlers, and of the ELBO class."""
    steps = {}
    for name, step in (("distributions, no Pyro", _bare_step), ("Pyro traces, no ELBO class", _traced_step)):
        torch.manual_seed(0)
        vae = build((1, 28, 28), z_dim=50, hidden_dims=(400,))
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        steps[name] = functools.partial(step, vae, opt, n)
    return steps


def _bare_step(vae, opt, n, x):
    """log w = log p(x|z) + log p(z) − log q(z|x) from the VAE's own distribution objects
    (guide, prior, likelihood), z = rsample of q; no Pyro primitive, handler or ELBO."""
    q = vae.posterior(x)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per contender")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--round-steps", type=int, default=20, help="steps per contender per round")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--no-svi", action="store_true", help="skip the pyro.optim/SVI reference")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the package's distributions without Pyro, and Pyro's traces without an ELBO "
                        "class: where the Trainer's remaining time over the hand-written loop goes")
    args = p.parse_args(argv)

    train = load_dataset("binarized-mnist", "train", root=args.data)
    if args.limit:
        train.x = train.x[: args.limit]
    torch.manual_seed(0)
    vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,))
    enc, dec = copy.deepcopy(vae.posterior.encoder), copy.deepcopy(vae.decoder)
    hand_opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    trainer = Trainer(vae, train, objective="elbo", lr=1e-3, batch_size=args.batch_size, seed=0)

    n = len(train)
    contenders = {
        "hand-written PyTorch": lambda x: hand_written_step(enc, dec, hand_opt, x),
        "pyro_vae Trainer": lambda x: trainer.step(x),
    }
    if args.breakdown:
        for name, step in breakdown_steps(build_vae, n).items():
            contenders[name] = step
    if not args.no_svi:
        torch.manual_seed(0)  # the same initial weights as the others
        svi_vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,))
        pyro.clear_param_store()
        svi = SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        contenders["Pyro SVI + pyro.optim.Adam"] = lambda x: svi.step(x, num_data=n) / n

    # Rounds of `round_steps` steps, the contenders taking turns on the same batches; a
    # burst of load from elsewhere then hits one round, not one contender's whole epoch.
    steps_per_epoch = math.ceil(n / args.batch_size)
    per_step = {k: [] for k in contenders}
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
    times = {k: [statistics.median(v) * steps_per_epoch] for k, v in per_step.items()}
    losses = {k: statistics.mean(v[-steps_per_epoch:]) for k, v in losses.items()}
    base = statistics.median(times["hand-written PyTorch"])
    # paired: each round's ratio compares the contenders over the same seconds of machine load
    paired = {k: statistics.median(a / b for a, b in zip(v, per_step["hand-written PyTorch"]))
              for k, v in per_step.items()}
    print(f"binarized MNIST, {len(train)} images, batch {args.batch_size}, 784-400-50 MLP, "
          f"{torch.get_num_threads()} threads, {args.epochs} epochs per contender in {rounds} alternating rounds "
          f"of {args.round_steps} steps; s/epoch = median s/step × {steps_per_epoch} steps")
    print(f"{'contender':32s} {'s/epoch':>9s} {'ratio':>7s} {'paired':>7s} {'-ELBO, last epoch':>18s}")
    for name in contenders:
        med = statistics.median(times[name])
        print(f"{name:32s} {med:9.3f} {med / base:7.3f} {paired[name]:7.3f} {losses[name]:18.2f}")
    ratio = paired["pyro_vae Trainer"]
    print(f"ratio pyro_vae / hand-written (median of the {rounds} rounds' ratios): {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
