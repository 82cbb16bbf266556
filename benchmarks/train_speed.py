"""Epoch time of pyro_vae's training path against a hand-written PyTorch VAE.

Same networks (784-400-50 MLP, softplus), same initial weights, same batches
(binarized MNIST, batch 256), same optimizer (Adam, lr 1e-3), same objective
(the single-sample Monte Carlo ELBO, Trace_ELBO), in one run. Epochs alternate
between the contenders and the median epoch time of each is compared, so that a
machine that slows down in the middle slows both.

    python benchmarks/train_speed.py --data ../shared/data --epochs 3

Also timed, for reference: Pyro's own example style (``pyro.infer.SVI`` with
``pyro.optim.Adam`` and ``Trace_ELBO``) on the same model and guide.
"""

import argparse
import copy
import math
import statistics
import time

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import build_vae, load_dataset
from pyro_vae.training import Trainer

LOG_2PI = math.log(2 * math.pi)


def hand_written_epoch(encoder, decoder, optimizer, data, batch_size, generator):
    """A plain PyTorch VAE epoch: z = μ + σ ε, loss = −mean[log p(x|z) + log p(z) − log q(z|x)]."""
    total, steps = 0.0, 0
    for (x, _) in data.batches(batch_size, shuffle=True, generator=generator):
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
        total += loss.item()
        steps += 1
    return total / steps


def svi_epoch(svi, data, batch_size, generator):
    total, steps = 0.0, 0
    for (x, _) in data.batches(batch_size, shuffle=True, generator=generator):
        total += svi.step(x) / data.x.shape[0]
        steps += 1
    return total / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per contender")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--no-svi", action="store_true", help="skip the pyro.optim/SVI reference")
    args = p.parse_args(argv)

    train = load_dataset("binarized-mnist", "train", root=args.data)
    if args.limit:
        train.x = train.x[: args.limit]
    torch.manual_seed(0)
    vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,))
    enc, dec = copy.deepcopy(vae.posterior.encoder), copy.deepcopy(vae.decoder)
    hand_opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    trainer = Trainer(vae, train, objective="elbo", lr=1e-3, batch_size=args.batch_size, seed=0)

    contenders = {
        "hand-written PyTorch": lambda g: hand_written_epoch(enc, dec, hand_opt, train, args.batch_size, g),
        "pyro_vae Trainer": lambda g: trainer.train_epoch(),
    }
    if not args.no_svi:
        svi_vae = copy.deepcopy(build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,)))
        svi_vae.num_data = len(train)
        pyro.clear_param_store()
        svi = SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        contenders["Pyro SVI + pyro.optim.Adam"] = lambda g: svi_epoch(svi, train, args.batch_size, g)

    times = {k: [] for k in contenders}
    losses = {k: None for k in contenders}
    for epoch in range(args.epochs + 1):  # the first round warms up and is not counted
        for name, run in contenders.items():
            g = torch.Generator().manual_seed(epoch)
            t0 = time.perf_counter()
            losses[name] = run(g)
            if epoch > 0:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["hand-written PyTorch"])
    print(f"binarized MNIST, {len(train)} images, batch {args.batch_size}, 784-400-50 MLP, "
          f"{torch.get_num_threads()} threads, median of {args.epochs} epochs")
    print(f"{'contender':32s} {'s/epoch':>9s} {'ratio':>7s} {'last -ELBO':>11s}")
    for name in contenders:
        med = statistics.median(times[name])
        print(f"{name:32s} {med:9.3f} {med / base:7.3f} {losses[name]:11.2f}")
    ratio = statistics.median(times["pyro_vae Trainer"]) / base
    print(f"ratio pyro_vae / hand-written: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
