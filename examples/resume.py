"""A run that survives a kill: checkpoint, SIGKILL, resume, and the same result.

``pyro-vae train --checkpoint-every N`` saves model, optimizer, every RNG state and the
position in the epoch every N steps (atomically: a temporary file, then a rename).
This script starts a training run, kills it with SIGKILL at a random moment after its
first checkpoint, continues it with ``pyro-vae train --resume``, and compares the final
parameters with those of the same run left alone: on a CPU they are bit-identical.

    python examples/resume.py                     # scikit-learn digits, offline, < 1 min
    python examples/resume.py --epochs 5 --checkpoint-every 20
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae.runs import load_checkpoint


def train(out, args, resume=False):
    """``pyro-vae train`` in a child process (the process we may kill)."""
    opts = [
        "--epochs",
        str(args.epochs),
        "--binarize",
        "dynamic",
        "--batch-size",
        "64",
        "--seed",
        str(args.seed),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--no-progress",
    ]
    cmd = [sys.executable, "-m", "pyro_vae.cli", "train"]
    cmd += ["--resume", str(out)] if resume else opts + ["--out", str(out)]
    # one thread in every process: the same arithmetic in the same order, hence the same bits
    return subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, text=True)


def main(args):
    work = Path(args.out or tempfile.mkdtemp(prefix="pyro-vae-resume-"))
    print(f"1. an uninterrupted run, for reference ({work / 'whole'})")
    whole = train(work / "whole", args)
    print("   " + whole.communicate()[0].strip().splitlines()[-1])

    print("2. the same run, killed with SIGKILL at a random moment after its first checkpoint")
    run = train(work / "killed", args)
    while not (work / "killed" / "run.json").exists():
        time.sleep(0.01)
    time.sleep(random.Random(args.seed).uniform(0.0, args.max_delay))
    if run.poll() is not None:
        sys.exit("the run ended before the kill; pass more --epochs")
    run.send_signal(signal.SIGKILL)
    run.wait()
    at_kill = load_checkpoint(work / "killed" / "checkpoint.pt")
    print(
        f"   killed (exit status {run.returncode}); the checkpoint on disk is from step {at_kill['step']} "
        f"(epoch {at_kill['epoch'] + 1}, batch {at_kill['epoch_step']})"
    )

    print("3. pyro-vae train --resume")
    if at_kill["epoch"] >= args.epochs:
        print("   nothing to resume: the kill came after the run's last checkpoint, with training complete")
    else:
        resumed = train(work / "killed", args, resume=True)
        print("   " + "\n   ".join(resumed.communicate()[0].strip().splitlines()))
        if resumed.returncode:
            sys.exit(f"the resumed run failed (exit status {resumed.returncode})")

    a = load_checkpoint(work / "whole" / "checkpoint.pt")["model"]
    b = load_checkpoint(work / "killed" / "checkpoint.pt")["model"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    histories = [json.loads((work / d / "run.json").read_text())["history"]["valid_loss"] for d in ("whole", "killed")]
    print(
        f"4. final parameters bit-identical: {same}; validation -ELBO per epoch identical: "
        f"{histories[0] == histories[1]} ({histories[1][-1]:.3f} nats after {args.epochs} epochs)"
    )
    return same


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    p.add_argument("--max-delay", type=float, default=1.0, help="kill up to this many seconds after a checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    sys.exit(0 if main(p.parse_args()) else 1)
