"""The training recipe's options: learning-rate schedules, KL warm-up, a moving average
of the weights and best-validation weights, each checked against its formula, through
checkpoints and resume, and from the command line."""

import math

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from run_helpers import digits_data as data
from run_helpers import exit_code, make_trainer, round_trip

from pyro_vae import build_vae, load_dataset
from pyro_vae.cli import main
from pyro_vae.runs import CheckpointError, load_checkpoint, load_run, run_weights
from pyro_vae.train.trainer import Trainer, evaluate_loss, fit, scheduled_lr

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS_PER_EPOCH = 24  # ceil(1497 / 64)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


# ---- learning-rate schedules -------------------------------------------------------------
def test_schedules_follow_their_formulas():
    lr, lf, T = 1e-3, 1e-5, 10
    assert scheduled_lr(lr, "constant", 7) == lr
    assert scheduled_lr(lr, "cosine", 0, T, lf) == pytest.approx(lr)
    assert scheduled_lr(lr, "cosine", 5, T, lf) == pytest.approx((lr + lf) / 2)
    assert scheduled_lr(lr, "cosine", 2, T, lf) == pytest.approx(lf + (lr - lf) * (1 + math.cos(math.pi * 0.2)) / 2)
    assert scheduled_lr(lr, "exponential", 5, T, lf) == pytest.approx(math.sqrt(lr * lf))
    for schedule in ("cosine", "exponential"):  # stays at lr_final after T
        assert scheduled_lr(lr, schedule, T, T, lf) == pytest.approx(lf)
        assert scheduled_lr(lr, schedule, 3 * T, T, lf) == pytest.approx(lf)
    assert scheduled_lr(lr, "cosine", T, T) == pytest.approx(lr / 10)  # default lr_final


def test_the_optimizer_steps_with_each_epochs_scheduled_lr():
    t = make_trainer(lr_schedule="exponential", schedule_epochs=2, lr_final=3e-4)
    seen = []
    t.run(4, progress=False, step_callback=lambda tr: seen.append((tr.epoch, tr.optimizer.param_groups[0]["lr"])))
    by_epoch = {e: lr for e, lr in seen}
    assert by_epoch == pytest.approx({0: 3e-3, 1: math.sqrt(3e-3 * 3e-4), 2: 3e-4, 3: 3e-4})


def test_fit_schedules_over_its_epochs_and_bad_schedules_are_refused():
    train, valid = data()
    t = Trainer(build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,)), train, lr_schedule="cosine", epochs=7)
    assert t.schedule_epochs == 7  # T: schedule_epochs, or else the config's epochs
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        Trainer(build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,)), train, lr_schedule="linear")
    vae = build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,))
    lrs = []
    fit(
        vae,
        train,
        epochs=2,
        progress=False,
        lr_schedule="cosine",
        lr=1e-3,
        lr_final=1e-4,
        callback=lambda tr: lrs.append(tr.optimizer.param_groups[0]["lr"]),
    )
    assert lrs == pytest.approx([1e-3, (1e-3 + 1e-4) / 2])  # T = fit's 2 epochs


# ---- KL warm-up --------------------------------------------------------------------------
def test_kl_warmup_scales_exactly_the_kl_term():
    """With the mean-field ELBO and the same draws, the loss at β is
    −E[log p(x|z)] + β KL(q‖p), and KL is the closed form, summed and scaled by N/B."""
    t = make_trainer(objective=TraceMeanField_ELBO(), kl_warmup=1.0)
    x = torch.bernoulli(t.train_data.x[:64], generator=torch.Generator().manual_seed(0))
    losses = {}
    for step in (0, STEPS_PER_EPOCH // 2 - 1, STEPS_PER_EPOCH - 1):
        t.step_count = step
        pyro.set_rng_seed(3)
        with pyro.get_param_store().scope():
            losses[t.kl_weight()] = t._loss((x,)).item()
    assert sorted(losses) == pytest.approx([1 / 24, 0.5, 1.0])
    with torch.no_grad():
        q = t.vae.encode(x)
        mu, var = q.base_dist.loc, q.base_dist.scale**2
        kl = 0.5 * (mu**2 + var - 1 - var.log()).sum()  # KL(N(μ, σ²) ‖ N(0, 1)), summed
    kl = float(kl) * len(t.train_data) / 64
    b0, b1 = 1 / 24, 1.0
    assert (losses[b1] - losses[b0]) / (b1 - b0) == pytest.approx(kl, rel=1e-4)
    assert losses[0.5] == pytest.approx(losses[b1] - 0.5 * kl, rel=1e-5)


def test_kl_weight_rises_linearly_over_the_warmup_steps_then_stays_one():
    t = make_trainer(kl_warmup=2)
    betas = []
    t.run(3, progress=False, step_callback=lambda tr: betas.append(tr.kl_weight()))
    # kl_weight() after step s is the weight of step s + 1 (1-based), s + 1 over W = 48
    assert betas[:3] == pytest.approx([2 / 48, 3 / 48, 4 / 48])
    assert betas[46] == pytest.approx(1.0) and set(betas[47:]) == {1.0}
    assert make_trainer().kl_weight() == 1.0


def test_kl_warmup_is_refused_for_the_iwae_bound():
    with pytest.raises(ValueError, match="kl_warmup scales the KL term of an ELBO, and the objective is -L_5"):
        make_trainer(objective="iwae", particles=5, kl_warmup=1)


# ---- moving average and best weights -----------------------------------------------------
def test_ema_is_the_moving_average_of_the_steps_weights():
    d = 0.9
    t = make_trainer(ema_decay=d)
    trail = []
    t.run(1, progress=False, step_callback=lambda tr: trail.append(params(tr.vae)))
    expected = trail[0]  # the first update copies the weights, then θ̄ ← d θ̄ + (1 − d) θ
    for w in trail[1:]:
        expected = [d * e + (1 - d) * p for e, p in zip(expected, w)]
    for e, a in zip(expected, params(t.averaged.module)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(params(t.averaged.module), params(t.vae)))
    # validation scores the averaged model
    pyro.set_rng_seed(0)
    ema_loss = evaluate_loss(t.averaged.module, t.valid_data)
    pyro.set_rng_seed(0)
    assert t.validate() == pytest.approx(ema_loss, rel=0, abs=0)


def test_keep_best_keeps_the_lowest_validation_epochs_weights_and_fit_loads_them():
    t = make_trainer(keep_best=True)
    snapshots = []
    t.run(5, progress=False, callback=lambda tr: snapshots.append(params(tr.vae)))
    losses = t.history.valid_loss
    best = min(range(len(losses)), key=losses.__getitem__)
    assert t.best["epoch"] == best + 1 and t.best["valid_loss"] == losses[best]
    for a, b in zip(t.best["model"].values(), snapshots[best]):
        assert torch.equal(a, b)

    train, valid = data()
    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    history = fit(vae, train, valid, epochs=5, progress=False, batch_size=64, lr=3e-3, keep_best=True)
    assert history.valid_loss == losses
    for a, b in zip(params(vae), snapshots[best]):
        assert torch.equal(a, b)


def test_keep_best_keeps_the_best_epoch_not_the_last_when_validation_rises():
    """16 training images, 4 a batch, lr 1e-2: the model overfits, so the validation loss
    falls, then rises; the kept weights are the lowest epoch's and differ from the last's."""
    import dataclasses

    train = load_dataset("digits", "train", binarize="static")
    valid = load_dataset("digits", "valid", binarize="static")
    few = dataclasses.replace(train, x=train.x[:16], y=train.y[:16])
    torch.manual_seed(0)
    t = Trainer(
        build_vae((1, 8, 8), z_dim=4, hidden_dims=(64,)), few, valid, batch_size=4, lr=1e-2, seed=0, keep_best=True
    )
    snapshots = []
    t.run(40, progress=False, callback=lambda tr: snapshots.append(params(tr.vae)))
    losses = t.history.valid_loss
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best < len(losses) - 1 and losses[-1] > losses[best] + 0.5  # best and last differ here
    assert t.best["epoch"] == best + 1 and t.best["valid_loss"] == losses[best]
    for a, b in zip(t.best["model"].values(), snapshots[best]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(t.best["model"].values(), snapshots[-1]))

    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(64,))
    fit(vae, few, valid, epochs=40, progress=False, batch_size=4, lr=1e-2, keep_best=True)
    for a, b in zip(params(vae), snapshots[best]):  # fit leaves the best epoch's weights in the model
        assert torch.equal(a, b)


@pytest.mark.parametrize("stop_after", [STEPS_PER_EPOCH + 5, 2 * STEPS_PER_EPOCH])
def test_recipe_state_resumes_bit_identically(stop_after):
    recipe = dict(lr_schedule="cosine", schedule_epochs=3, kl_warmup=1.5, ema_decay=0.95, keep_best=True)
    ref = make_trainer(**recipe)
    ref.run(4, progress=False)

    class Stop(Exception):
        pass

    first, saved = make_trainer(**recipe), {}

    def on_step(tr):
        if tr.step_count == stop_after:
            saved["state"] = round_trip(tr.state_dict())
            raise Stop

    with pytest.raises(Stop):
        first.run(4, progress=False, step_callback=on_step)
    second = make_trainer(init_seed=7, **recipe)
    second.load_state_dict(saved["state"])
    second.run(4 - second.epoch, progress=False)
    for a, b in zip(params(ref.vae) + params(ref.averaged), params(second.vae) + params(second.averaged)):
        assert torch.equal(a, b)
    assert second.history.valid_loss == ref.history.valid_loss
    assert second.best["epoch"] == ref.best["epoch"]
    for a, b in zip(ref.best["model"].values(), second.best["model"].values()):
        assert torch.equal(a, b)


def test_resuming_with_ema_a_checkpoint_without_it_is_refused():
    t = make_trainer()
    t.run(1, progress=False)
    state = round_trip(t.state_dict())
    with pytest.raises(CheckpointError, match="no moving average"):
        make_trainer(ema_decay=0.99).load_state_dict(state)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(ema_decay=1.0), "ema_decay must lie in"),
        (dict(kl_warmup=-1), "kl_warmup must be"),
        (dict(lr_final=0.0), "lr_final must be"),
    ],
)
def test_bad_recipe_values_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(**bad)


# ---- command line and run folders --------------------------------------------------------
def test_cli_recipe_run_stores_best_and_ema_and_evaluate_chooses_weights(tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "train",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "64",
        "--hidden",
        "16",
        "--z-dim",
        "4",
        "--lr-schedule",
        "cosine",
        "--kl-warmup",
        "1",
        "--ema",
        "0.9",
    ]
    assert main(args) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    run = load_run(out, weights="raw")[1]
    assert (
        run["train"]["schedule_epochs"] == 3
        and run["train"]["ema_decay"] == 0.9
        and run["best"]["epoch"] == state["best"]["epoch"]
    )
    for weights, expected in (
        ("raw", state["model"]),
        ("best", state["best"]["model"]),
        ("last", {k[len("module.") :]: v for k, v in state["ema"].items() if k.startswith("module.")}),
    ):
        model, _ = load_run(out, weights=weights)
        assert run_weights(state, weights).keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(v, expected[k]), (weights, k)
    ema_model, _ = load_run(out, weights="last")
    raw_model, _ = load_run(out, weights="raw")
    assert not all(torch.equal(a, b) for a, b in zip(params(ema_model), params(raw_model)))
    capsys.readouterr()
    assert main(["evaluate", str(out), "-K", "10", "--limit", "20", "--no-progress", "--weights", "raw"]) == 0
    assert "wrote" in capsys.readouterr().out
    # a resume with more epochs keeps the stored schedule (T = 3) and the run's options
    assert main(["train", "--resume", str(out), "--epochs", "4", "--no-progress"]) == 0
    lr = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-4)  # lr_final = lr/10, reached at T = 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ema", "1.5"], "argument --ema: must be a decay in (0, 1)"),
        (["--kl-warmup", "2", "--objective", "iwae", "--particles", "5"], "--kl-warmup scales the KL term"),
        (["--lr-final", "-1"], "argument --lr-final: must be a positive number"),
        (["--schedule-epochs", "0"], "argument --schedule-epochs: must be a positive integer"),
    ],
)
def test_cli_refuses_bad_recipe_options_before_writing(tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert exit_code(["train", "--epochs", "1", "--out", str(out), "--no-progress"] + flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
