"""Data-parallel training on 2 CPU processes (gloo), launched with torchrun.

One launch of ``tests/train/ddp_worker.py`` under ``torchrun --nproc_per_node 2`` does three
SGD steps through the Trainer API and then runs ``pyro-vae train`` (the CLI's own
code, in the same process group). Checked here:

- the gradient every rank steps with is, to float32 rounding, the gradient a single
  process computes on the global batch, Σ_r (b_r/B) ∇ℓ̄_r, with each shard's draws of z
  from the generator seeded ``seed + r`` (replayed here in one process), shards of
  unequal size included; every rank holds the same gradients and parameters;
- the CLI run: rank 0 alone writes, the loss falls, and the final parameters are as
  close to a single-process run with the same global batches, initialisation and
  seed as single-process runs that differ only in their Monte Carlo draws are.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import build_vae, load_dataset
from pyro_vae.models import build_model
from pyro_vae.objectives import make_objective
from pyro_vae.runs import load_checkpoint
from pyro_vae.train.distributed import shard
from pyro_vae.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
import ddp_worker  # noqa: E402

# 64 particles and the closed-form KL make the Monte Carlo spread between runs small
# next to the effect of a missing gradient average (see the last test)
CLI = [
    "--hidden",
    "16",
    "--z-dim",
    "4",
    "--batch-size",
    "64",
    "--binarize",
    "dynamic",
    "--lr",
    "0.003",
    "--objective",
    "meanfield",
    "--particles",
    "64",
    "--checkpoint-every",
    "10",
    "--seed",
    "0",
    "--no-progress",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One torchrun launch; returns (folder, completed process)."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "train" / "ddp_worker.py"),
        str(tmp),
        *CLI,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, proc


def test_shard_cuts_a_global_batch_into_contiguous_pieces():
    x, y = torch.arange(10).reshape(5, 2), torch.arange(5)
    (x0, y0), s0 = shard((x, y), 0, 2)
    (x1, y1), s1 = shard((x, y), 1, 2)
    assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert (s0, s1) == (3 / 5, 2 / 5)
    (x2,), s2 = shard((x[:1],), 1, 2)
    assert x2.shape[0] == 0 and s2 == 0.0


def test_every_rank_steps_with_the_global_batch_gradient(ddp_run):
    tmp, _ = ddp_run
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # one model: rank 1 started from another initialisation, and got rank 0's
    torch.manual_seed(100)
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    for p, a, b in zip(vae.parameters(), ranks[0]["init"], ranks[1]["init"]):
        assert torch.equal(p, a) and torch.equal(a, b)
    for key in ("grads", "params"):
        for step_a, step_b in zip(ranks[0][key], ranks[1][key]):
            assert all(torch.equal(a, b) for a, b in zip(step_a, step_b))
    assert ranks[0]["loss"] == ranks[1]["loss"]

    # replay in one process: the same global batches (same seeded permutation), each
    # shard's draws from its rank's generator, at the parameters the ranks stepped from
    train = load_dataset("digits", "train", binarize="dynamic")
    elbo = make_objective("elbo")
    generator = torch.Generator().manual_seed(ddp_worker.SEED)
    batches = train.batches(ddp_worker.BATCH, shuffle=True, generator=generator)
    rng_states = []
    for r in (0, 1):
        pyro.set_rng_seed(ddp_worker.SEED + r)
        rng_states.append(torch.get_rng_state())
    before = ranks[0]["init"]
    for step in range(ddp_worker.STEPS):
        x, _ = next(batches)
        pieces = [x[:32], x[32:]]  # 63 points: 32 and 31
        expected_grad = [torch.zeros_like(p) for p in vae.parameters()]
        expected_loss = 0.0
        for r, xr in enumerate(pieces):
            with torch.no_grad():
                for p, value in zip(vae.parameters(), before):
                    p.copy_(value)
            torch.set_rng_state(rng_states[r])
            vae.zero_grad()
            with pyro.get_param_store().scope():
                loss = elbo.differentiable_loss(vae.model, vae.guide, xr, num_data=len(train)) / len(train)
            loss.backward()
            rng_states[r] = torch.get_rng_state()
            share = len(xr) / len(x)
            for g, p in zip(expected_grad, vae.parameters()):
                g += share * p.grad
            expected_loss += share * loss.item()
        got = ranks[0]["grads"][step]
        scale = max(g.abs().max().item() for g in expected_grad)
        for g_exp, g_got in zip(expected_grad, got):
            torch.testing.assert_close(g_got, g_exp, rtol=1e-5, atol=1e-6 * scale)
        assert ranks[0]["loss"][step] == pytest.approx(expected_loss, rel=1e-5)
        # SGD: θ' = θ − lr g
        for p_before, g, p_after in zip(before, got, ranks[0]["params"][step]):
            torch.testing.assert_close(p_after, p_before - ddp_worker.LR * g, rtol=1e-6, atol=1e-7)
        before = ranks[0]["params"][step]


def test_cli_under_torchrun_rank_0_writes_and_the_loss_falls(ddp_run):
    tmp, proc = ddp_run
    out = tmp / "run"
    assert proc.stdout.count("epoch 3: train") == 2 and "2 processes" in proc.stdout  # rank 0 prints, once a run
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "loss_curves.png",
        "overview.png",
        "reconstructions.png",
        "run.json",
        "samples.png",
    ]
    run = json.loads((out / "run.json").read_text())
    state = load_checkpoint(out / "checkpoint.pt")
    assert run["world_size"] == state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert run["num_data"] == 1497  # the ELBO of every shard is scaled to the whole data set
    train, valid = run["history"]["train_loss"], run["history"]["valid_loss"]
    assert len(train) == len(valid) == 3
    assert train[0] > train[1] > train[2] and valid[0] > valid[1] > valid[2]


def single_process(run, noise_seed, half_batches=False):
    """``pyro-vae train`` with the same options on one process: the same initialisation
    (torch.manual_seed(seed) before building), the same global batches, Pyro's draws
    from ``noise_seed``. Returns the final parameters, flat.

    With ``half_batches``, each step sees only the first half of its global batch: what
    rank 0 would train on if the gradients were never averaged."""
    train = load_dataset("digits", "train", binarize="dynamic", seed=0)
    torch.manual_seed(0)
    model = build_model(run["model"])
    trainer = Trainer(model, train, lr=0.003, batch_size=64, seed=0, objective="meanfield", particles=64)
    pyro.set_rng_seed(noise_seed)
    for _ in range(3):
        for x, _ in train.batches(64, shuffle=True, generator=trainer.generator):
            trainer.step(x[: (len(x) + 1) // 2] if half_batches else x)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_cli_under_torchrun_matches_a_single_process_run(ddp_run):
    """Tolerance: two runs of one algorithm that differ only in their Monte Carlo draws
    end apart; the data-parallel run differs from the single-process run (seed 0) in just
    that way (its shards' draws come from two generators), so under a correct
    implementation its distance D to the single-process run is exchangeable with the
    distances R_k of K single-process runs with other draws: P(D > max R_k) = 1/(K+1).
    We allow D ≤ 1.5 max R_k (K = 4). Control: rank 0 training alone on its half of
    each global batch (gradients never averaged) ends beyond that bound."""
    tmp, _ = ddp_run
    run = json.loads((tmp / "run" / "run.json").read_text())
    state = load_checkpoint(tmp / "run" / "checkpoint.pt")
    ddp = torch.cat([state["model"][k].reshape(-1) for k, _ in build_model(run["model"]).named_parameters()])
    ref = single_process(run, 0)
    spread = [(single_process(run, 1000 + k) - ref).norm().item() for k in range(4)]
    distance = (ddp - ref).norm().item()
    unaveraged = (single_process(run, 0, half_batches=True) - ref).norm().item()
    print(
        f"distance {distance:.4f}, single-process spread {[round(s, 4) for s in spread]}, "
        f"without averaging {unaveraged:.4f}"
    )
    assert distance <= 1.5 * max(spread)
    assert unaveraged > 1.5 * max(spread)


def test_a_data_parallel_run_resumed_from_its_checkpoint_ends_bit_identical(ddp_run):
    """2 epochs, then ``--resume`` to 3 (every rank restores its own RNG states from the
    checkpoint rank 0 wrote) equals the 3-epoch run."""
    tmp, proc = ddp_run
    assert "resuming after step 48 (epoch 3, batch 0); 2 processes" in proc.stdout
    whole, resumed = load_checkpoint(tmp / "run" / "checkpoint.pt"), load_checkpoint(tmp / "part" / "checkpoint.pt")
    assert resumed["step"] == whole["step"] == 72
    for name in whole["model"]:
        assert torch.equal(whole["model"][name], resumed["model"][name]), name
    assert resumed["history"]["valid_loss"] == whole["history"]["valid_loss"]


def test_a_diverging_data_parallel_run_stops_every_rank_at_the_same_step(ddp_run):
    tmp, proc = ddp_run
    assert [(tmp / f"nan{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    # one message per rank, the same on both; found in the whole stream, not per line,
    # since two processes share the pipe
    errors = re.findall(
        r"pyro-vae train: error: loss is .*?\(saved after step \d+, epoch \d+, batch \d+\)", proc.stderr
    )
    assert len(errors) == 2 and errors[0] == errors[1], proc.stderr
    assert f"the last good checkpoint is {tmp / 'nan' / 'checkpoint.pt'}" in errors[0]
    state = load_checkpoint(tmp / "nan" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
