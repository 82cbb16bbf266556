"""``pyro-vae train --resume RUN_DIR``: the run's stored options, with those that may change
(:data:`RESUME_MAY_CHANGE`) taken from the command line and any other given option
refused unless it equals the stored one."""

import argparse
import json
from pathlib import Path

from ..train import checkpoints
from .common import UsageError


#: Options that may differ from the run's when resuming; any other option given with
#: --resume must equal the value the run's run.json stores.
RESUME_MAY_CHANGE = ("epochs", "device", "no_progress", "checkpoint_every", "data", "download", "resume", "out",
                     "overwrite", "ddp_timeout")


def run_options(args):
    """The train options as JSON values: what ``run.json`` stores to resume the run."""
    skip = {"func", "command", "argv", "resume", "out", "overwrite"}
    return {k: v for k, v in vars(args).items()
            if k not in skip and (v is None or isinstance(v, (bool, int, float, str, list)))}


def given_options(args, add_arguments):
    """The names (``dest``) of the train options given on the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = getattr(args, "argv", None)
    if argv is None:  # called without main(): options that differ from their defaults
        return {a.dest for a in parser._actions if getattr(args, a.dest, a.default) != a.default}
    argv = list(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv[argv.index("train") + 1:] if "train" in argv else argv)
    return set(vars(given))


def _accepts(parse):
    """``v -> bool``: whether the option type ``parse`` (:func:`~pyro_vae.cli.common.number_type`)
    takes the stored value ``v``."""
    def ok(value):
        try:
            parse(value)
        except argparse.ArgumentTypeError:
            return False
        return True

    return ok


def check_stored_options(stored, path, add_arguments):
    """Check the options a ``run.json`` stores against the train options' own types
    and choices, so that a hand-edited or corrupt file is a one-line error.

    :raises checkpoints.CheckpointError: naming the file and the option."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    for key, value in stored.items():
        action = actions.get(key)
        if action is None:
            raise checkpoints.CheckpointError(f"{path}: options.{key} is not an option of pyro-vae train "
                                              "(the file is corrupt or from another version)")
        flag = action.option_strings[-1] if action.option_strings else key
        if value is None and action.default is None:
            continue
        if isinstance(action, argparse._StoreConstAction):  # store_true, store_false
            ok, what = isinstance(value, bool), "true or false"
        else:
            kind = action.type or str
            one = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                   float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                   str: lambda v: isinstance(v, str)}.get(kind) or _accepts(kind)
            what = {int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)
            if action.nargs in ("+", "*"):
                ok, what = isinstance(value, list) and all(one(v) for v in value), f"a list of {what.split(' ', 1)[1]}s"
                ok = ok and (action.nargs == "*" or len(value) > 0)
            else:
                ok = one(value)
            if ok and action.choices is not None:
                values = value if isinstance(value, list) else [value]
                ok, what = all(v in action.choices for v in values), f"one of {', '.join(map(str, action.choices))}"
        if not ok:
            shown = json.dumps(value) if len(json.dumps(value)) <= 40 else type(value).__name__
            raise checkpoints.CheckpointError(f"{path}: options.{key} ({flag}) must be {what}, got {shown}")


def resume_args(args, add_arguments):
    """The options of the run in ``args.resume``, with those that may change
    (:data:`RESUME_MAY_CHANGE`) taken from the command line.

    :raises UsageError: if the folder holds no run, or an option given on the command
        line differs from the run's, naming each.
    """
    run_dir = Path(args.resume)
    for name in (checkpoints.RUN_JSON, checkpoints.CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(f"--resume {run_dir}: there is no {name} there; is it a run folder written by "
                             "pyro-vae train?")
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise UsageError(f"--resume continues the run in its own folder {run_dir}; drop --out {args.out}")
    stored = checkpoints.load_json(run_dir / checkpoints.RUN_JSON).get("options")
    if stored is None:
        raise UsageError(f"--resume {run_dir}: its run.json stores no options (written by an older pyro-vae), "
                         "so the run cannot be resumed")
    check_stored_options(stored, run_dir / checkpoints.RUN_JSON, add_arguments)
    given = given_options(args, add_arguments)
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    diffs = []
    for k in sorted(given - set(RESUME_MAY_CHANGE)):
        value = getattr(args, k)
        if stored.get(k, defaults.get(k)) != value:
            diffs.append(f"--{k.replace('_', '-')} {value!r} (the run has {stored.get(k, defaults.get(k))!r})")
    if diffs:
        raise UsageError(f"--resume {run_dir}: the given options differ from the run's (its run.json): "
                         f"{', '.join(diffs)}; drop them to continue the run as it was, or start a new run "
                         "with another --out")
    merged = dict(vars(args))
    for k, v in stored.items():
        if not (k in RESUME_MAY_CHANGE and k in given):
            merged[k] = v
    return argparse.Namespace(**merged)
