"""Run by tests/train/test_distributed.py under ``torchrun --nproc_per_node 2``:

1. three data-parallel SGD steps through the :class:`~pyro_vae.train.trainer.Trainer` API,
   from a *different* initialisation on each rank (the broadcast must make them one),
   on global batches of 63 points (shards of 32 and 31: unequal shares); each rank saves
   its initial parameters and, after every step, the gradients it stepped with, the
   reported loss and its parameters, to ``OUT/rank{r}.pt``;
2. then ``pyro-vae train`` itself (``pyro_vae.cli.main``) with the remaining options,
   in the same process group: 3 epochs into ``OUT/run``; and 2 epochs into ``OUT/part``
   then ``--resume OUT/part --epochs 3`` (a data-parallel resume); and a run that
   diverges (``--lr 1e30``), which must stop every rank with exit status 2 (no rank
   left waiting in a collective), its status saved to ``OUT/nan{r}.txt``.

    torchrun --nproc_per_node 2 tests/train/ddp_worker.py OUT --hidden 16 ...
"""

import sys
from pathlib import Path

import torch

from pyro_vae import build_vae, cli, load_dataset
from pyro_vae.train.distributed import init_from_env, rank
from pyro_vae.train.trainer import Trainer

SEED, BATCH, LR, STEPS = 5, 63, 0.05, 3


class Stop(Exception):
    pass


def api_steps(out):
    r = rank()
    train = load_dataset("digits", "train", binarize="dynamic")
    torch.manual_seed(100 + r)
    trainer = Trainer(
        build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,)), train, batch_size=BATCH, lr=LR, optimizer="sgd", seed=SEED
    )
    record = {"init": [p.detach().clone() for p in trainer.vae.parameters()], "grads": [], "loss": [], "params": []}

    def on_step(t):
        record["grads"].append([p.grad.detach().clone() for p in t.vae.parameters()])
        record["loss"].append(t._epoch_loss - sum(record["loss"]))
        record["params"].append([p.detach().clone() for p in t.vae.parameters()])
        if t.step_count == STEPS:
            raise Stop

    try:
        trainer.train_epoch(on_step)
    except Stop:
        pass
    torch.save(record, Path(out) / f"rank{r}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_from_env("cpu")
    out = sys.argv[1]
    Path(out).mkdir(parents=True, exist_ok=True)
    api_steps(out)
    opts = sys.argv[2:]
    for argv in (
        ["train", *opts, "--epochs", "3", "--out", f"{out}/run"],
        ["train", *opts, "--epochs", "2", "--out", f"{out}/part"],
        ["train", "--resume", f"{out}/part", "--epochs", "3", "--no-progress"],
    ):
        code = cli.main(argv)
        if code:
            sys.exit(code)
    code = cli.main(["train", *opts, "--epochs", "1", "--lr", "1e30", "--checkpoint-every", "1", "--out", f"{out}/nan"])
    Path(f"{out}/nan{rank()}.txt").write_text(str(code))
