"""Time of a semi-supervised run's training step with subnormal floats computed and flushed.

One step of ``TraceEnum_ELBO.differentiable_loss`` and its backward on a batch of unlabelled
images (y summed out), for the weights of a trained ``--model ssvae`` or ``m1m2`` run, with
``torch.set_flush_denormal`` off and on in alternating rounds; the median of each. Also
prints the share of q(y|x) below the smallest normal float32 (1.18e-38) on that batch: the
operands that take the CPU's slow path when the flush is off.

    python benchmarks/denormal_speed.py results/runs/m1m2-1000 --data ../shared/data --threads 1
"""

import argparse
import statistics
import time

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.runs import load_run
from pyro_vae.train.denormal import flush_denormal


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder of pyro-vae train --model ssvae or m1m2")
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    model, run = load_run(args.run_dir)
    data = run["data"]
    x = load_dataset(data["dataset"], "train", args.data, binarize="static", seed=0).x[: args.batch_size]
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)

    def step():
        elbo.differentiable_loss(model.model, model.guide, x, None).backward()

    with torch.no_grad():
        probs = model.predict_proba(x)
    tiny = torch.finfo(torch.float32).tiny
    print(f"{args.run_dir}: q(y|x) below {tiny:.3g} (subnormal or 0): {100 * (probs < tiny).float().mean():.1f} %")
    times = {False: [], True: []}
    for r in range(args.rounds):
        for flush in (False, True) if r % 2 == 0 else (True, False):
            with flush_denormal(flush):
                step()  # warm
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[flush].append((time.perf_counter() - t0) / args.steps)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, median of {args.rounds} rounds of {args.steps} steps"
    )
    print(f"  flush off: {1000 * off:.1f} ms/step\n  flush on:  {1000 * on:.1f} ms/step\n  off / on:  {off / on:.2f}")


if __name__ == "__main__":
    main()
