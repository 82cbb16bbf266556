"""Options checked before anything is created (and nothing created when they fail),
devices checked, the --out folder checked first, a collective timeout for torchrun
runs with a clear error when a rank stalls, and the missing figures of a finished run
written by ``pyro-vae plot RUN`` or ``train --resume``."""

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import TINY, fails, snapshot

from pyro_vae.cli import build_parser, main
from pyro_vae.train import distributed

REPO = Path(__file__).resolve().parents[2]
FIGURES = ["loss_curves.png", "reconstructions.png", "samples.png", "overview.png"]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- options -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, says",
    [
        (["--hidden", "0"], "argument --hidden: must be a positive integer, got 0"),
        (["--hidden", "-4"], "argument --hidden: must be a positive integer, got -4"),
        (["--hidden", "16", "0"], "argument --hidden: must be a positive integer, got 0"),
        (["--scale", "nan"], "argument --scale: must be a positive number or learned, got nan"),
        (["--scale", "inf"], "argument --scale: must be a positive number or learned, got inf"),
        (["--scale", "-1"], "argument --scale: must be a positive number or learned, got -1"),
        (["--scale", "0"], "argument --scale: must be a positive number or learned, got 0"),
        (["--device", "foo"], "--device 'foo' is not a device"),
        (["--device", "mps"], "--device mps: pyro-vae runs on cpu or cuda (cuda:N), not on mps"),
        (["--device", "meta"], "--device meta: pyro-vae runs on cpu or cuda (cuda:N), not on meta"),
        (["--ddp-timeout", "0"], "argument --ddp-timeout: must be a positive number, got 0"),
        (["--ddp-timeout", "nan"], "argument --ddp-timeout: must be a positive number, got nan"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_bad_option_is_refused_before_anything_is_created(tmp_path, capsys, option, says):
    out = tmp_path / "run"
    fails(["train", "--epochs", "1", "--out", str(out), *TINY, *option], capsys, says)
    assert not out.exists()


def test_cuda_on_a_machine_without_one_is_refused_by_every_command(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever this runs
    before = snapshot(finished_run)
    for argv in (
        ["sample", str(finished_run), "--out", str(tmp_path / "s.png")],
        ["train", "--out", str(tmp_path / "run"), *TINY],
        ["evaluate", str(finished_run), "-K", "10", "--no-progress"],
        ["plot", str(finished_run), "--out", str(tmp_path / "plots")],
    ):
        fails(argv + ["--device", "cuda"], capsys, "--device cuda was asked for, but no CUDA GPU is available")
    assert not list(tmp_path.iterdir()) and snapshot(finished_run) == before


@pytest.mark.parametrize("device, says", [("foo", "is not a device"), ("mps", "not on mps"), ("meta", "not on meta")])
def test_sample_refuses_a_device_it_cannot_use(finished_run, tmp_path, capsys, device, says):
    fails(["sample", str(finished_run), "--out", str(tmp_path / "s.png"), "--device", device], capsys, says)
    assert not (tmp_path / "s.png").exists()


def test_a_gpu_that_does_not_exist_is_refused(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with n GPUs, checked before any use
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    n = 2
    fails(
        ["sample", str(finished_run), "--out", str(tmp_path / "s.png"), "--device", f"cuda:{n}"],
        capsys,
        f"there is no GPU {n}",
    )


def test_an_out_that_names_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("precious")
    fails(["train", "--epochs", "1", "--out", str(tmp_path / "file"), *TINY], capsys, "is a file, not a folder")
    fails(["train", "--epochs", "1", "--out", str(tmp_path / "file" / "run"), *TINY], capsys, "--out folder")
    assert (tmp_path / "file").read_text() == "precious"
    # the folder is made (to lock it) before the data are read: a failed start removes it
    out = tmp_path / "deep" / "run"
    fails(
        ["train", "--dataset", "binarized-mnist", "--data", str(tmp_path / "nothing"), "--out", str(out), *TINY],
        capsys,
        "binarized_mnist_train.amat",
    )
    assert not out.exists()


# ---- the collective timeout ------------------------------------------------------------------
def test_the_ddp_timeout_option_has_a_default_of_minutes():
    args = build_parser().parse_args(["train"])
    assert args.ddp_timeout == distributed.DEFAULT_TIMEOUT == 300


def test_the_process_group_gets_the_timeout(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.update(kw, b=backend))
    monkeypatch.setattr(distributed.atexit, "register", lambda f: None)
    assert distributed.init_from_env("cpu", timeout=7) == "cpu"
    assert seen == {"b": "gloo", "timeout": datetime.timedelta(seconds=7)}


def _rank_pid(parent, rank):
    """The pid of the torchrun worker (a descendant of ``parent``) with RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if f"RANK={rank}".encode() in environ and ppid != 1 and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
            if ppid == parent or _is_descendant(ppid, parent):
                return int(entry.name)
    return None


def _is_descendant(pid, ancestor):
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def test_a_stalled_rank_stops_the_other_with_a_clear_error_within_the_timeout(tmp_path):
    out = tmp_path / "run"
    log = open(tmp_path / "log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pyro_vae.cli",
            "train",
            "--epochs",
            "1000",
            "--out",
            str(out),
            *TINY,
            "--ddp-timeout",
            "5",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stalled = None
    try:
        stop = time.monotonic() + 120
        while not (out / "run.json").is_file() and time.monotonic() < stop and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "run.json").is_file(), (tmp_path / "log").read_text()
        stalled = _rank_pid(proc.pid, 1)
        assert stalled is not None
        os.kill(stalled, signal.SIGSTOP)
        t0 = time.monotonic()
        said = "rank 0: no answer from the other ranks within --ddp-timeout 5 s"
        while said not in (tmp_path / "log").read_text() and time.monotonic() - t0 < 90:
            time.sleep(0.2)
        waited = time.monotonic() - t0
        text = (tmp_path / "log").read_text()
        assert said in text, text[-3000:]
        assert waited < 60, waited
        line = next(t for t in text.splitlines() if said in t)
        assert line.startswith("pyro-vae train: error:") and "the last good checkpoint is" in line
        assert "Traceback" not in text
    finally:
        if stalled is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stalled, sig)
                except ProcessLookupError:
                    pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---- the missing figures of a finished run ---------------------------------------------------
def test_resume_of_a_finished_run_writes_its_missing_figures(run_copy, capsys):
    kept = (run_copy / "samples.png").read_bytes()
    for name in FIGURES[:2]:
        (run_copy / name).unlink()
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "wrote its missing figures loss_curves.png, reconstructions.png" in said
    assert all((run_copy / name).is_file() for name in FIGURES)
    assert (run_copy / "samples.png").read_bytes() == kept  # a figure already there is left alone
    # with every figure there, a finished run still says how to train further
    fails(["train", "--resume", str(run_copy), "--no-progress"], capsys, "already trained 1 epochs", "--epochs N")


def test_plot_writes_the_missing_figures_of_a_finished_run(run_copy, capsys):
    for name in FIGURES:
        (run_copy / name).unlink()
    assert (
        main(["plot", str(run_copy), "--no-classifier", "--draws", "50", "--grid", "3", "-n", "4", "--limit", "40"])
        == 0
    )
    assert f"wrote the missing figures of {run_copy}" in capsys.readouterr().out
    assert all((run_copy / name).is_file() for name in FIGURES)
    assert (run_copy / "plots" / "samples.png").is_file()
