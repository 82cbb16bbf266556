"""Run folders that refuse to be corrupted: one writer at a time (the folder's lock),
temporary files that belong to their writer, a full disk or a read-only folder as a
one-line error with the old checkpoint kept, every malformed checkpoint or run.json a
one-line error (exit 2), a format version and ordinary file modes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import TINY, fails, snapshot

from pyro_vae import runs
from pyro_vae.cli import main
from pyro_vae.config import FORMAT
from pyro_vae.runs import CHECKPOINT, RUN_JSON, CheckpointError, atomic_write
from pyro_vae.train.checkpoints import Checkpointer

LOCK = ".pyro-vae.lock"  # the lock file inside a run folder (runs.LOCK)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")


def cli_process(*argv, **kwargs):
    """``pyro-vae ARGV`` in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from pyro_vae.cli import main; sys.exit(main(sys.argv[1:]))", *argv],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(predicate, seconds=90):
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


HOLD = (
    "import sys, time; from pyro_vae.runs import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(120)"
)


def holder(folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- the run folder's lock -----------------------------------------------------------------
def test_the_lock_file_name():
    assert runs.LOCK == LOCK


def test_a_second_writer_is_refused_naming_the_holders_pid(tmp_path):
    proc = holder(tmp_path / "run")
    try:
        with pytest.raises(runs.RunLockedError, match=rf"being written by another pyro-vae process \(PID {proc.pid}\)"):
            runs.RunLock(tmp_path / "run").acquire()
    finally:
        stop(proc)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / LOCK).read_text().strip() == str(proc.pid)  # left behind by kill -9
    lock = runs.RunLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / LOCK).read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_failed_start_removes_the_folder_it_created(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with runs.RunLock(tmp_path / "new" / "run"):
            raise ZeroDivisionError("inside the lock")
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "kept").mkdir()
    with runs.RunLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def test_a_lock_on_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        runs.RunLock(tmp_path / "file").acquire()


def test_two_trainings_into_one_fresh_out_one_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    proc = cli_process("train", "--epochs", "100", "--out", str(out), *TINY)
    try:
        wait_for(lambda: (out / LOCK).is_file())
        fails(
            ["train", "--epochs", "1", "--out", str(out), *TINY],
            capsys,
            f"being written by another pyro-vae process (PID {proc.pid})",
        )
        fails(["train", "--epochs", "1", "--out", str(out), "--overwrite", *TINY], capsys, f"PID {proc.pid}")
        assert proc.poll() is None  # the first goes on
    finally:
        stop(proc)


def test_a_resume_while_the_run_trains_is_refused(run_copy, capsys):
    proc = cli_process("train", "--resume", str(run_copy), "--epochs", "300", "--checkpoint-every", "1")
    try:
        wait_for(lambda: (run_copy / LOCK).is_file())
        fails(
            ["train", "--resume", str(run_copy), "--epochs", "400", "--no-progress"],
            capsys,
            f"being written by another pyro-vae process (PID {proc.pid})",
        )
        assert proc.poll() is None
    finally:
        stop(proc)


def test_a_run_killed_mid_training_resumes_over_its_stale_lock(run_copy, capsys):
    proc = cli_process("train", "--resume", str(run_copy), "--epochs", "300", "--checkpoint-every", "5")
    step = lambda: json.loads((run_copy / RUN_JSON).read_text()).get("step", 0)  # noqa: E731
    try:
        assert wait_for(lambda: (run_copy / LOCK).is_file() and step() > 12)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        stop(proc)
    assert (run_copy / LOCK).is_file()
    epoch = json.loads((run_copy / RUN_JSON).read_text())["epoch"]
    assert main(["train", "--resume", str(run_copy), "--epochs", str(epoch + 2), "--no-progress"]) == 0
    assert not (run_copy / LOCK).exists()


# ---- temporary files -------------------------------------------------------------------------
def test_temporary_files_carry_their_writers_pid(tmp_path):
    seen = []
    atomic_write(tmp_path / CHECKPOINT, lambda f: seen.extend(p.name for p in tmp_path.iterdir()))
    assert len(seen) == 1 and seen[0].startswith(f".{CHECKPOINT}.{os.getpid()}.") and seen[0].endswith(".tmp")


def test_a_checkpointer_leaves_the_temporary_files_of_a_live_process_alone(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".{CHECKPOINT}.{other.pid}.abcd.tmp"
        dead_tmp = tmp_path / f".{RUN_JSON}.{dead.pid}.efgh.tmp"
        own_tmp = tmp_path / f".{CHECKPOINT}.{os.getpid()}.ijkl.tmp"
        for p in (live_tmp, dead_tmp, own_tmp):
            p.write_bytes(b"half")
        Checkpointer(tmp_path)
        assert live_tmp.exists() and not dead_tmp.exists() and not own_tmp.exists()
    finally:
        other.kill()
        other.wait()


# ---- what a run folder holds ---------------------------------------------------------------
def test_run_json_has_a_format_version_and_files_have_the_figures_mode(finished_run):
    run = json.loads((finished_run / RUN_JSON).read_text())
    assert run["format"] == FORMAT == 3
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished_run.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert LOCK not in modes  # released and removed at the end of the run


def test_a_run_json_of_a_newer_format_is_refused(run_copy, capsys):
    run = json.loads((run_copy / RUN_JSON).read_text())
    (run_copy / RUN_JSON).write_text(json.dumps(dict(run, format=99)))
    fails(["sample", str(run_copy), "--out", str(run_copy / "s.png")], capsys, "format 99", "newer pyro-vae")


# ---- malformed checkpoints -----------------------------------------------------------------
def edit_checkpoint(run_dir, edit):
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    state = edit(state)
    torch.save(state, run_dir / CHECKPOINT)


def nan_weights(state):
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    return state


def inf_weights(state):
    name = list(state["model"])[-1]
    state["model"][name][0] = float("inf")
    return state


def drop(key):
    return lambda state: {k: v for k, v in state.items() if k != key}


def bad_torch_rng(state):
    state["rng"][0]["torch"] = torch.zeros(10, dtype=torch.uint8)
    return state


def bad_numpy_rng(state):
    state["rng"][0]["numpy"]["keys"] = state["rng"][0]["numpy"]["keys"][:10]
    return state


def bad_epoch(state):
    state["epoch"] = "one"
    return state


def nan_optimizer(state):
    slot = next(iter(state["optimizer"]["state"].values()))
    slot["exp_avg"] = torch.full_like(slot["exp_avg"], float("nan"))
    return state


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda s: [1, 2, 3], "is not a pyro-vae checkpoint: it holds a list"),
        (drop("model"), "lacks 'model'"),
        (nan_weights, "holds NaN or inf weights"),
        (inf_weights, "holds NaN or inf weights"),
    ],
    ids=["list", "no-model", "nan", "inf"],
)
@pytest.mark.parametrize("command", ["sample", "evaluate", "resume"])
def test_a_malformed_checkpoint_is_a_one_line_error(run_copy, capsys, edit, says, command):
    edit_checkpoint(run_copy, edit)
    before = snapshot(run_copy)
    argv = {
        "sample": ["sample", str(run_copy), "--out", str(run_copy / "s.png")],
        "evaluate": ["evaluate", str(run_copy), "-K", "10", "--no-progress"],
        "resume": ["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"],
    }[command]
    fails(argv, capsys, "checkpoint.pt", says)
    assert snapshot(run_copy) == before  # no PNG, no JSON, nothing trained


@pytest.mark.parametrize(
    "edit, says",
    [
        (drop("rng"), "lacks 'rng'"),
        (drop("optimizer"), "lacks 'optimizer'"),
        (bad_torch_rng, "rng[0].torch is not a torch RNG state"),
        (bad_numpy_rng, "rng[0].numpy is not a NumPy RNG state"),
        (bad_epoch, "epoch must be an integer"),
        (nan_optimizer, "optimizer state holds NaN or inf"),
    ],
    ids=["no-rng", "no-optimizer", "torch-rng", "numpy-rng", "epoch", "nan-optimizer"],
)
def test_a_checkpoint_that_cannot_be_resumed_is_a_one_line_error(run_copy, capsys, edit, says):
    edit_checkpoint(run_copy, edit)
    before = snapshot(run_copy)
    fails(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"], capsys, "checkpoint.pt", says)
    assert snapshot(run_copy) == before


# ---- malformed run.json --------------------------------------------------------------------
def edit_run(run_dir, edit):
    run = json.loads((run_dir / RUN_JSON).read_text())
    (run_dir / RUN_JSON).write_text(json.dumps(edit(run)))


def setting(path, value):
    def edit(run):
        node = run
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return run

    return edit


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda run: [run], "run.json is not a run's record: it holds a list"),
        (lambda run: "run", "it holds a string"),
        (setting(["model", "hidden_dims"], 16), "model.hidden_dims must be a list of positive integers, got 16"),
        (setting(["model", "z_dim"], "8"), "model.z_dim must be a positive integer"),
        (setting(["model", "image_shape"], [8, 8]), "model.image_shape must be a list of 3 positive integers"),
        (setting(["model", "color"], "red"), "unknown model setting color"),
        (setting(["model", "model"], "gan"), "model.model 'gan' is not a known model kind"),
        (drop("model"), "holds no model settings"),
        (setting(["model"], [1]), "model must be an object"),
    ],
    ids=["list", "string", "hidden-int", "z-dim-str", "shape", "unknown-key", "unknown-kind", "no-model", "model-list"],
)
def test_a_malformed_run_json_is_a_one_line_error(run_copy, capsys, edit, says):
    edit_run(run_copy, edit)
    before = snapshot(run_copy)
    fails(["sample", str(run_copy), "--out", str(run_copy / "s.png")], capsys, "run.json", says)
    fails(["evaluate", str(run_copy), "-K", "10", "--no-progress"], capsys, "run.json", says)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "edit, says",
    [
        (setting(["train", "batch_size"], "abc"), 'train.batch_size must be a positive integer, got "abc"'),
        (setting(["model", "hidden_dims"], 16), "model.hidden_dims must be a list of positive integers, got 16"),
        (setting(["train", "epochs"], 0), "train.epochs must be a positive integer, got 0"),
        (setting(["train", "ema_decay"], 1.5), "train.ema_decay must be a number in (0, 1) or null, got 1.5"),
        (setting(["train", "batch_size"], 2.5), "train.batch_size must be a positive integer, got 2.5"),
        (setting(["train", "objective"], 3), "train.objective must be a string"),
        (setting(["data", "labels"], 0), "data.labels must be a positive integer or null, got 0"),
        (setting(["train", "keep_best"], "yes"), 'train.keep_best must be true or false, got "yes"'),
        (setting(["train", "colour"], 1), "train.colour is not a setting of the trainer"),
        (setting(["train"], [1]), "train must be an object"),
        (setting(["epoch"], -1), "epoch must be an integer ≥ 0"),
    ],
    ids=[
        "batch-size-str",
        "hidden-int",
        "epochs-zero",
        "ema-above-one",
        "batch-size-float",
        "objective-int",
        "labels-zero",
        "flag",
        "unknown",
        "train-list",
        "epoch",
    ],
)
def test_a_malformed_run_json_is_a_one_line_error_on_resume(run_copy, capsys, edit, says):
    edit_run(run_copy, edit)
    before = snapshot(run_copy)
    fails(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"], capsys, says)
    assert snapshot(run_copy) == before


# ---- a full disk, a read-only folder ---------------------------------------------------------
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from pyro_vae.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_disk_that_fills_during_a_save_is_a_one_line_error_and_the_old_checkpoint_is_kept(run_copy):
    before = snapshot(run_copy)
    size = (run_copy / CHECKPOINT).stat().st_size
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED,
            str(size // 2),
            "train",
            "--resume",
            str(run_copy),
            "--epochs",
            "2",
            "--no-progress",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "inline_container" not in err, err
    assert "could not write the checkpoint" in err and "the previous one is kept" in err, err
    assert snapshot(run_copy) == before  # the old checkpoint and run.json, no temporary file


@pytest.fixture
def read_only():
    """Make a folder read-only, for root too (chattr +i where chmod does not bind)."""
    made = []

    def make(folder):
        folder.chmod(0o555)
        probe = folder / ".probe"
        try:
            probe.write_text("")
        except OSError:
            made.append(("chmod", folder))
            return folder
        probe.unlink()
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        made.append(("chattr", folder))
        return folder

    yield make
    for how, folder in made:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_resume_into_a_read_only_folder_fails_before_training(run_copy, read_only, capsys):
    before = snapshot(run_copy)
    read_only(run_copy)
    start = time.monotonic()
    fails(
        ["train", "--resume", str(run_copy), "--epochs", "50", "--no-progress"],
        capsys,
        f"cannot write into the run folder {run_copy}",
    )
    assert time.monotonic() - start < 20  # no epoch trained first
    assert snapshot(run_copy) == before


def test_an_out_folder_that_is_read_only_is_refused_before_anything(tmp_path, read_only, capsys):
    parent = read_only(tmp_path / "ro" if (tmp_path / "ro").mkdir() is None else None)
    fails(
        ["train", "--epochs", "1", "--out", str(parent / "run"), *TINY],
        capsys,
        f"cannot create the --out folder {parent / 'run'}",
    )
    fails(
        ["train", "--epochs", "1", "--out", str(parent), *TINY], capsys, f"cannot write into the --out folder {parent}"
    )
    assert not list(parent.iterdir())
