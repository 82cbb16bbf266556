"""Stochastic variational inference for a model/guide pair.

:class:`Trainer` runs SVI epochs over minibatches. Each step computes the objective's
differentiable loss −ELBO(x_batch) from ``vae.model(x, num_data=N)`` and
``vae.guide(x, num_data=N)`` (the batch stands for the N training points: the data plate
scales it by N/B) with Pyro's own ELBO classes, and steps a ``torch.optim`` optimizer
over ``vae.parameters()``. This is the route Pyro documents for custom training loops
(``elbo.differentiable_loss`` + a PyTorch optimizer); it gives the same gradients as
``pyro.infer.SVI`` with ``pyro.optim.Adam`` without the param store's per-parameter
optimizers.

Losses are reported in nats per data point: the scaled minibatch loss divided by N.

A trainer's whole state (model, optimizer, RNG states, epoch and position in the
epoch, history) is :meth:`Trainer.state_dict`; :meth:`Trainer.load_state_dict`
continues from it, mid-epoch too, step for step as if never stopped
(:class:`~pyro_vae.train.checkpoints.Checkpointer` saves it to a run folder). Launched under
torchrun, a trainer trains one model data-parallel (:mod:`pyro_vae.train.distributed`).
"""

import math
import time
from dataclasses import asdict, dataclass, field

import pyro
import torch
from pyro import poutine
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import _compat
from ..config import TrainConfig
from ..contract import contract
from ..objectives import CompiledTrace_ELBO, TracingError, make_objective, objective_label
from ..ops.compile import forked_rng
from ..runs.files import CheckpointError, check_config, load_weights
from . import distributed as dp
from . import rng
from .denormal import flush_denormal

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
LR_SCHEDULES = ("constant", "cosine", "exponential")


def scheduled_lr(lr, schedule, epoch, schedule_epochs=None, lr_final=None):
    """The learning rate of epoch ``epoch`` (0-based) under a schedule that goes from
    ``lr`` at epoch 0 to ``lr_final`` at epoch T = ``schedule_epochs`` and stays there:

    - ``"constant"``: lr;
    - ``"cosine"``: lr_f + (lr − lr_f)(1 + cos(π t/T))/2, t = min(epoch, T);
    - ``"exponential"``: lr (lr_f/lr)^(t/T).

    :param float lr_final: lr_f (default lr/10).
    """
    if schedule == "constant":
        return lr
    lr_final = lr / 10 if lr_final is None else lr_final
    t = min(epoch, schedule_epochs) / schedule_epochs
    if schedule == "cosine":
        return lr_final + (lr - lr_final) * (1 + math.cos(math.pi * t)) / 2
    return lr * (lr_final / lr) ** t


class ScaleLatent(poutine.messenger.Messenger):
    """Multiply the log-density of every unobserved sample site by β (KL warm-up):
    applied to both model and guide, the ELBO becomes
    E_q[log p(x|z)] + β E_q[log p(z) − log q(z|x)] = E_q[log p(x|z)] − β KL(q‖p)."""

    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stopped before any parameter was changed by it."""


@dataclass
class History:
    """Per-epoch records: the train loss (mean over the epoch's steps), the validation
    loss (whole validation set, after the epoch), both in nats per data point, and
    seconds; ``objective`` names the loss (:func:`~pyro_vae.objectives.objective_label`:
    ``"-ELBO"``, ``"-L_5"``, ``"Fisher loss"``, ``"reconstruction"``)."""

    train_loss: list = field(default_factory=list)
    valid_loss: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)
    objective: str = "-ELBO"

    def to_dict(self):
        return asdict(self)


def loss_function(objective):
    """``f(model, guide, x) -> loss`` that leaves gradients to be computed by the caller
    (``differentiable_loss``), or, for objectives that only offer ``loss_and_grads``
    (e.g. ``TraceGraph_ELBO``), a function that computes them itself."""
    if hasattr(objective, "differentiable_loss"):
        return objective.differentiable_loss, True
    return objective.loss_and_grads, False


@torch.no_grad()
def evaluate_loss(vae, data, objective="elbo", batch_size=1000, num_particles=1, with_labels=False):
    """−ELBO (or the objective's loss) averaged over every point of ``data``, in nats
    per data point: the sum of the unscaled batch losses divided by the number of points.

    :param vae: a model with Pyro ``model``/``guide`` methods.
    :param data: :class:`~pyro_vae.data.ImageData`.
    :param bool with_labels: pass ``(x, y)`` to model and guide (conditional models).

    The model is evaluated in eval mode (no dropout), its modules' modes restored afterwards.
    """
    if isinstance(objective, str):
        objective = make_objective(objective, num_particles)
    total, count = 0.0, 0
    modes = [(m, m.training) for m in vae.modules()] if isinstance(vae, torch.nn.Module) else []
    try:
        for m, _ in modes:
            m.eval()
        with pyro.get_param_store().scope():
            for batch in _batches(data, batch_size, shuffle=False, with_labels=with_labels):
                total += float(objective.loss(vae.model, vae.guide, *batch))
                count += batch[0].shape[0]
    finally:
        for m, mode in modes:
            m.training = mode
    return total / count


def _batches(data, batch_size, shuffle=True, generator=None, with_labels=False):
    for xb, yb in data.batches(batch_size, shuffle=shuffle, generator=generator):
        yield (xb, yb) if with_labels else (xb,)


class Trainer:
    """SVI on ``vae.model``/``vae.guide`` over an :class:`~pyro_vae.data.ImageData` set.

    :param vae: a :class:`~pyro_vae.models.VAE`, or any module with Pyro ``model`` and
        ``guide`` methods (:class:`~pyro_vae.contract.PyroVAE`); what else it offers (a
        lazily built guide, a likelihood to check the data with, ...) is read once, as its
        :class:`~pyro_vae.contract.Contract`.
    :param train: training data; its size N is passed to model and guide as
        ``num_data=N`` when both take that keyword (they then scale their data plate by
        N/B). Otherwise every site of both is scaled by N/B (``poutine.scale``), which is
        right for a model whose sites all sit in the data plate; a model with global
        latents must take ``num_data`` and scale only its plate.
    :param valid: validation data or None.
    :param TrainConfig config: the settings (:class:`~pyro_vae.config.TrainConfig`, its
        defaults when None). Keyword ``options`` are fields of it that replace the
        config's (``Trainer(vae, train, lr=3e-3)`` is ``Trainer(vae, train,
        TrainConfig(lr=3e-3))``); :attr:`config` holds the result, what ``run.json`` stores.
    :param objective: an ELBO object to step with in place of the one ``config.objective``
        names (:func:`~pyro_vae.objectives.make_objective` with ``config.particles``); a
        string is taken as ``config.objective``.
    :param bool with_labels: pass the labels to model and guide (conditional models).
    :param bool distributed: train data-parallel over the processes of the
        ``torch.distributed`` process group (:mod:`pyro_vae.train.distributed`); default: when
        a group of more than one process is initialized. Each rank then steps on its
        shard of every global batch of ``batch_size`` points, gradients are averaged,
        and Pyro's draws on rank r are seeded ``seed + r``.

    The settings, as the fields of :class:`~pyro_vae.config.TrainConfig`:

    :param int particles: L, particles per data point.
    :param str optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"``.
    :param float lr: learning rate.
    :param float weight_decay: λ, the optimizer's own weight decay (0: off).
    :param int batch_size: B.
    :param int seed: seeds Pyro, PyTorch and the batch order.
    :param device: ``"cpu"``, ``"cuda"``, ...
    :param float clip_norm: clip the gradient's global norm to this value (None: off).
    :param bool fused: step the optimizer with PyTorch's fused implementation (one kernel
        for all parameters, ``torch.optim.Adam(..., fused=True)``) instead of one kernel
        per parameter and operation; the same update up to float rounding. A resumed run
        steps as this trainer is set, whatever the checkpoint's run used.
    :param bool compile: ``torch.compile`` the model's networks (each submodule named
        ``encoder`` or ``decoder``, in place with ``nn.Module.compile``) while Pyro's
        handlers, distributions and ELBO run eagerly as before; each new batch shape
        (and grad mode) compiles once, on its first step, and the networks stay compiled
        after training. Same values up to float rounding. Off by default: for the MLP on
        CPU it is slower than eager and adds tens of seconds of compilation.
        See ``docs/speed.md`` for what each option costs and buys.
    :param bool traced: step with :class:`~pyro_vae.objectives.CompiledTrace_ELBO` in place
        of the ``"elbo"`` objective (``Trace_ELBO`` with its particles): its program traced
        once per batch shape into one graph with its backward, compiled by inductor and
        replayed, the graph's kernels chosen by timing them here (:mod:`pyro_vae.ops.kernels`;
        the draws come from torch's global generator as in eager Pyro, so checkpoints
        resume the same stream). The same loss and gradients up to float rounding. For a
        fully reparameterized guide and a program whose Python depends on the data's shapes
        only; refused (one-line error, when the trainer is built) otherwise, and with
        ``kl_warmup``, ``compile`` or data-parallel training. Each batch shape compiles once
        (seconds; see ``docs/speed.md``): the first when the trainer is built, any other on
        its first step. Pyro's validation, when on, runs in the eager run before each
        trace, on a forked random generator, so that it changes no draw. A
        :class:`~pyro_vae.objectives.CompiledTrace_ELBO` passed as ``objective`` does the same.
    :param bool flush_denormal: count subnormal floats (below 1.18e-38 in float32) as 0 in
        the CPU arithmetic of each epoch's steps and of validation (:mod:`pyro_vae.train.denormal`;
        the thread's mode is restored after each). The semi-supervised VAE's enumerated
        backward meets them once its classifier is confident, and on x86 CPUs they cost a
        slow path (3.8 × the step's time in docs/speed.md). Off by default. It sets the
        calling thread's mode: with ``torch.get_num_threads() > 1`` torch's worker threads
        keep theirs, and only the calling thread's share of each kernel is flushed.
    :param str lr_schedule: ``"constant"`` (default), ``"cosine"`` or ``"exponential"``:
        the learning rate of each epoch is :func:`scheduled_lr`, set at the epoch's start.
    :param int schedule_epochs: T, the epoch at which the schedule reaches ``lr_final``
        (None: ``epochs``).
    :param float lr_final: the learning rate at epoch T and after (default lr/10).
    :param float kl_warmup: KL warm-up over this many epochs (0: off): step s
        (1-based) optimizes E_q[log p(x|z)] − β_s KL(q‖p) with β_s = min(1, s/W), W the
        warm-up's steps, by scaling every latent site of model and guide by β_s
        (:class:`ScaleLatent`). The train loss reported meanwhile is that objective;
        validation is always the plain one. ELBO objectives only (the IWAE bound needs
        one scale for every site).
    :param float ema_decay: keep an exponential moving average of the weights,
        θ̄ ← d θ̄ + (1 − d) θ after each step (``torch.optim.swa_utils.AveragedModel``),
        and validate (and keep as best) the averaged model, :attr:`eval_model`; None: off.
    :param bool keep_best: keep the weights of :attr:`eval_model` at the epoch of lowest
        validation loss in :attr:`best` (saved in the checkpoint; :func:`fit` loads them
        into the model at the end).
    """

    def __init__(
        self, vae, train, valid=None, config=None, *, objective=None, with_labels=False, distributed=None, **options
    ):
        if isinstance(objective, str):  # the objective's name is a setting; an ELBO object is not
            options["objective"], objective = objective, None
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a pyro_vae.config.TrainConfig, got {type(config).__name__}")
        unknown = sorted(set(options) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"Trainer got unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)}; its options "
                f"are the fields of TrainConfig: {', '.join(TrainConfig.__dataclass_fields__)}"
            )
        #: the trainer's settings (:class:`~pyro_vae.config.TrainConfig`), all of them
        self.config = config = config.replace(**options)
        _check_config(config)
        lr, batch_size, seed, device, clip_norm = (
            config.lr,
            config.batch_size,
            config.seed,
            config.device,
            config.clip_norm,
        )
        kl_warmup, ema_decay, fused, compile, traced = (
            config.kl_warmup,
            config.ema_decay,
            config.fused,
            config.compile,
            config.traced,
        )
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for, but no CUDA GPU is available")
        if distributed is None:
            distributed = dp.is_initialized()
        self.rank, self.world_size = (dp.rank(), dp.world_size()) if distributed else (0, 1)
        pyro.set_rng_seed(seed + self.rank)
        self.generator = torch.Generator().manual_seed(seed)
        for what, data in (("train", train), ("valid", valid)):
            if data is not None and not (hasattr(data, "batches") and hasattr(data, "x")):
                raise TypeError(
                    f"{what} must be an ImageData (e.g. pyro_vae.ImageData(x, image_shape=(1, H, W)) "
                    f"for a tensor x of shape (N, H*W)), got {type(data).__name__}"
                )
        #: what the model offers beyond its model and guide (:class:`~pyro_vae.contract.Contract`)
        self.contract = contract(vae)
        self.vae = vae.to(self.device)
        self.train_data = train.to(self.device)
        self.valid_data = valid.to(self.device) if valid is not None else None
        _check(self.contract, train)
        if valid is not None:
            _check(self.contract, valid)
        self.num_data = len(train)
        self._pair = None  # (model, guide) at β = 1, built once: a compiled ELBO keeps its graphs per pair
        if self.contract.fixed_batch_size:
            _check_batch_size(len(train), batch_size)
        self.objective = make_objective(config.objective, config.particles) if objective is None else objective
        #: the name of the loss (``"-ELBO"``, ``"-L_K"``, ``"Fisher loss"``, ``"reconstruction"``)
        self.label = objective_label(self.objective, vae)
        if kl_warmup and self.label != "-ELBO":
            raise ValueError(
                f"kl_warmup scales the KL term of an ELBO, and the objective is {self.label}; "
                f"use it with elbo, meanfield or tracegraph"
            )
        # a lazily built guide makes its parameters first, so that rank 0's are the ones broadcast
        _setup_guide(self.contract, self.train_data, batch_size, with_labels, self.num_data)
        if self.world_size > 1:
            dp.broadcast_module(self.vae)
        self.fused, self.compiled = bool(fused), bool(compile)
        #: the exponential moving average of the weights (``AveragedModel``), or None
        self.averaged = None
        if ema_decay is not None:  # copied before the networks are compiled
            self.averaged = AveragedModel(self.vae, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        if self.compiled:
            _compile_networks(self.vae)
        if traced:
            self.objective = self._compiled(self.objective)
        self.loss_fn, self.differentiable = loss_function(self.objective)
        #: ``grads(batch, share) -> loss``: the loss in nats per data point, with its gradients
        #: in ``.grad``; chosen here once, by whether the objective is differentiable and by
        #: data-parallel training
        self._grads = self._gradient_strategy()
        if isinstance(self.objective, CompiledTrace_ELBO):
            self._trace_first_batch(batch_size, with_labels, kl_warmup)
        self.optimizer = OPTIMIZERS[config.optimizer](
            self.vae.parameters(),
            lr=lr,
            weight_decay=config.weight_decay,
            **({"fused": True} if self.fused else {}),
        )
        self.lr, self.lr_schedule, self.lr_final = lr, config.lr_schedule, config.lr_final
        self.schedule_epochs = config.scheduled_epochs
        self.warmup_steps = kl_warmup * math.ceil(len(train) / batch_size)
        self.keep_best = bool(config.keep_best)
        #: with ``keep_best``: ``{"epoch", "valid_loss", "model"}`` of the best validation
        #: epoch so far (``model``: the state dict of :attr:`eval_model` then), or None
        self.best = None
        self._params = [p for p in self.vae.parameters() if p.requires_grad]
        self.batch_size, self.clip_norm, self.with_labels = batch_size, clip_norm, with_labels
        self.valid_batch_size = config.valid_batch_size
        self.history = History(objective=self.label)
        #: the trainer's own Pyro param store (``pyro.get_param_store().scope(param_state)``):
        #: training one model never touches the parameters another left in the global store.
        self.param_state = {"params": {}, "constraints": {}}
        self.epoch = 0
        self.step_count = 0
        #: steps taken in the current epoch (> 0 only inside an epoch, or after
        #: :meth:`load_state_dict` of a mid-epoch checkpoint).
        self.epoch_step = 0
        self._epoch_loss, self._epoch_seconds, self._epoch_start = 0.0, 0.0, None
        #: set by whoever saves checkpoints (:class:`~pyro_vae.train.checkpoints.Checkpointer`):
        #: named in the error that stops a run at a NaN or inf loss.
        self.last_checkpoint = None
        # the batch shapes (and devices) this process has stepped on with Pyro's
        # validation; not saved: a resumed run validates its first step again
        self._validated = set()

    def _compiled(self, objective):
        """The ``"elbo"`` objective as a :class:`~pyro_vae.objectives.CompiledTrace_ELBO`
        with the same particles and plate nesting."""
        if isinstance(objective, CompiledTrace_ELBO):
            return objective
        if type(objective) is not pyro.infer.Trace_ELBO:
            raise TracingError(
                f"traced steps reproduce Trace_ELBO (objective 'elbo'), not "
                f"{type(objective).__name__}; train it without traced"
            )
        return CompiledTrace_ELBO(
            num_particles=objective.num_particles,
            max_plate_nesting=objective.max_plate_nesting,
            vectorize_particles=objective.vectorize_particles,
            modules=[self.vae],
        )

    def _trace_first_batch(self, batch_size, with_labels, kl_warmup):
        """Trace the compiled objective's graph on the first batch's shape, so that a
        program it cannot take is refused before any step."""
        why = (
            "kl_warmup (β changes every step)"
            if kl_warmup
            else "compile (the traced step is compiled whole)"
            if self.compiled
            else "data-parallel training"
            if self.world_size > 1
            else None
        )
        if why:
            raise ValueError(f"traced=True does not combine with {why}")
        first = next(_batches(self.train_data, batch_size, False, torch.Generator().manual_seed(0), with_labels))
        with pyro.get_param_store().scope():
            self.objective.trace(*self._program(), *first, **self._loss_kwargs())

    def _program(self, beta=1.0):
        """``(model, guide)`` as the objective sees them: the KL term's sites scaled by β
        (:class:`ScaleLatent`) when β < 1, and every site by N/B (B read from the batch)
        when model and guide take no ``num_data``."""
        if beta >= 1 and self._pair is not None:
            return self._pair
        model, guide = self.vae.model, self.vae.guide
        if beta < 1:
            model, guide = ScaleLatent(beta)(model), ScaleLatent(beta)(guide)
        if not self.contract.takes_num_data:
            model, guide = _scaled_by_batch(model, self.num_data), _scaled_by_batch(guide, self.num_data)
        if beta >= 1:
            self._pair = (model, guide)
        return model, guide

    def _loss_kwargs(self):
        """``num_data=N`` for model and guide that take it (they scale their data plate)."""
        return {"num_data": self.num_data} if self.contract.takes_num_data else {}

    @property
    def eval_model(self):
        """The model that is validated: the weights' moving average with ``ema_decay``,
        else the trained model itself."""
        return self.averaged.module if self.averaged is not None else self.vae

    def kl_weight(self):
        """β of the next step under KL warm-up (1 when off or over)."""
        return min(1.0, (self.step_count + 1) / self.warmup_steps) if self.warmup_steps else 1.0

    def step(self, *batch, share=1.0):
        """One SVI step on a minibatch; returns −ELBO in nats per data point.

        :param float share: in data-parallel training, this rank's part b_r / B of the
            global batch (see :func:`pyro_vae.train.distributed.all_reduce_gradients`).
        :raises NonFiniteLossError: if the loss is NaN or inf; no parameter is changed.

        Pyro's validation checks (``pyro.enable_validation``: site shapes, distribution
        arguments and supports, NaN warnings), when on, run on this process's first step
        with each batch shape and device, and are off for the steps after it: the program
        is the same, and a NaN or inf loss is caught here at any step. What later steps
        no longer check is the support of their batches under the likelihood; the trainer
        checks the whole data set for that when it is built. Pyro's flags and torch's default
        for distributions' argument checks are as before after every step.
        """
        key = (tuple(batch[0].shape), batch[0].device)
        if not pyro.poutine.util.is_validation_enabled():
            return self._step(batch, share)
        if key not in self._validated:
            value = self._step(batch, share)
            self._validated.add(key)
            return value
        torch_default = _compat.default_validate_args()
        try:
            with pyro.validation_enabled(False):
                return self._step(batch, share)
        finally:  # pyro.validation_enabled resets torch's default to Pyro's flag
            torch.distributions.Distribution.set_default_validate_args(torch_default)

    def _loss(self, batch):
        """The objective's loss of the batch, which stands for the N training points."""
        model, guide = self._program(self.kl_weight())
        return self.loss_fn(model, guide, *batch, **self._loss_kwargs())

    def _step(self, batch, share):
        self.optimizer.zero_grad(set_to_none=True)
        value = self._grads(batch, share)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value} at {self._where()}")
        if self.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.clip_norm)
            if not torch.isfinite(norm):  # clipping a NaN gradient would still step to NaN
                raise NonFiniteLossError(f"the gradient norm is {norm.item()} at {self._where()}")
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.vae)
        self.step_count += 1
        return value

    def _where(self):
        return f"step {self.step_count + 1} (epoch {self.epoch + 1}, batch {self.epoch_step + 1})"

    def _gradient_strategy(self):
        """The step's ``grads(batch, share)``: one process or this rank's shard, each with
        :meth:`_backward` or :meth:`_loss_and_scaled_grads`."""
        local = self._backward if self.differentiable else self._loss_and_scaled_grads
        if self.world_size == 1:
            return lambda batch, share: local(batch)

        def data_parallel(batch, share):
            """The global batch's loss, this rank's gradients averaged over the ranks by their
            shares; an empty shard contributes nothing."""
            value = local(batch) if batch[0].shape[0] else 0.0
            return dp.all_reduce_gradients(self._params, value, share)

        return data_parallel

    def _backward(self, batch):
        """The loss divided by N, and its gradients in ``.grad`` when it is finite. A NaN or inf
        loss is returned, not raised, so that in data-parallel training every rank learns of
        it in the same collective."""
        loss = self._loss(batch) / self.num_data
        value = loss.item()
        if math.isfinite(value):
            loss.backward()
        return value

    def _loss_and_scaled_grads(self, batch):
        """For objectives that only offer ``loss_and_grads`` (``TraceGraph_ELBO``): the
        loss and gradients divided by N, as for the differentiable objectives, so that SGD
        and ``clip_norm`` see per-data-point gradients whatever the objective."""
        n = self.num_data
        value = self._loss(batch) / n
        for p in self._params:
            if p.grad is not None:
                p.grad.div_(n)
        return value

    def train_epoch(self, step_callback=None):
        """One pass over the training data; returns the mean −ELBO of its steps.

        Continues an epoch begun before a mid-epoch checkpoint (``epoch_step > 0``): the
        batch generator then holds its state from the epoch's start, so the same
        permutation (and dynamic binarization) is drawn again and the batches already
        stepped on are skipped.

        :param step_callback: ``step_callback(trainer)`` after each step (e.g.
            :meth:`~pyro_vae.train.checkpoints.Checkpointer.on_step`).
        """
        self.vae.train()
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(self.lr, self.lr_schedule, self.epoch, self.schedule_epochs, self.lr_final)
        self._epoch_start = self.generator.get_state()
        if self.epoch_step == 0:
            self._epoch_loss, self._epoch_seconds = 0.0, 0.0
        with pyro.get_param_store().scope(self.param_state), flush_denormal(self.config.flush_denormal):
            batches = _batches(self.train_data, self.batch_size, True, self.generator, self.with_labels)
            t0 = time.perf_counter()
            for i, batch in enumerate(batches):
                if i < self.epoch_step:
                    continue  # stepped on before the checkpoint this run resumed from
                share = 1.0
                if self.world_size > 1:
                    batch, share = dp.shard(batch, self.rank, self.world_size)
                self._epoch_loss += self.step(*batch, share=share)
                self.epoch_step += 1
                t1 = time.perf_counter()
                self._epoch_seconds, t0 = self._epoch_seconds + t1 - t0, t1
                if step_callback is not None:
                    step_callback(self)
        loss, self.epoch_step = self._epoch_loss / self.epoch_step, 0
        return loss

    def validate(self):
        """The objective's loss on the validation data, of :attr:`eval_model`."""
        model = self.eval_model
        model.eval()
        with flush_denormal(self.config.flush_denormal):
            loss = evaluate_loss(
                model, self.valid_data, self.objective, self.valid_batch_size, with_labels=self.with_labels
            )
        model.train()
        return loss

    def _update_best(self):
        loss = self.history.valid_loss[-1]
        if self.best is None or loss < self.best["valid_loss"]:
            weights = {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}
            self.best = {"epoch": self.epoch, "valid_loss": loss, "model": weights}

    def run(self, epochs, progress=True, callback=None, step_callback=None):
        """Train ``epochs`` more epochs (the first one may be the rest of an epoch begun
        before a mid-epoch checkpoint). ``callback(trainer)`` runs after each epoch,
        ``step_callback(trainer)`` after each step. Validation runs on rank 0 only.

        :raises NonFiniteLossError: at a NaN or inf loss, naming the step and
            :attr:`last_checkpoint`; the parameters are those before that step.
        """
        bar = tqdm(range(epochs), desc=f"epochs ({self.label})", disable=not progress or self.rank != 0, leave=False)
        for _ in bar:
            try:
                train_loss = self.train_epoch(step_callback)
            except NonFiniteLossError as e:
                last = (
                    f"the last good checkpoint is {self.last_checkpoint}"
                    if self.last_checkpoint
                    else "no checkpoint was saved"
                )
                raise NonFiniteLossError(f"{e}; training stopped there, {last}") from None
            self.epoch += 1
            self.history.train_loss.append(train_loss)
            self.history.epoch_seconds.append(self._epoch_seconds)
            if self.valid_data is not None and self.rank == 0:
                self.history.valid_loss.append(self.validate())
                if self.keep_best:
                    self._update_best()
            bar.set_postfix(
                train=f"{train_loss:.2f}",
                valid=f"{self.history.valid_loss[-1]:.2f}" if self.history.valid_loss else "-",
            )
            if callback is not None:
                callback(self)
        return self.history

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self):
        """Everything needed to continue training exactly where it is, as tensors and
        plain containers (``torch.load(weights_only=True)`` reads it back):

        ``model`` and ``optimizer`` state dicts, the model's ``config``, ``epoch``
        (epochs completed), ``step`` (steps taken), ``epoch_step`` (steps taken in the
        current epoch) with the running ``epoch_loss``/``epoch_seconds``, the batch
        ``generator`` state *at the start of the current epoch* (mid-epoch) or now (at an
        epoch boundary), ``rng``: the global generators' states of every rank
        (:func:`pyro_vae.train.rng.get_state`), and ``history``.

        In data-parallel training every rank must call it: the RNG states are gathered.
        """
        rngs = dp.all_gather_object(rng.get_state(self.device)) if self.world_size > 1 else [rng.get_state(self.device)]
        return {
            "model": self.vae.state_dict(),
            "config": self.contract.config,
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step_count,
            "epoch_step": self.epoch_step,
            "epoch_loss": self._epoch_loss,
            "epoch_seconds": self._epoch_seconds,
            "generator": self._epoch_start if self.epoch_step > 0 else self.generator.get_state(),
            "rng": rngs,
            "world_size": self.world_size,
            "history": self.history.to_dict(),
            **({"ema": self.averaged.state_dict()} if self.averaged is not None else {}),
            **({"best": self.best} if self.best is not None else {}),
        }

    def load_state_dict(self, state):
        """Continue from a :meth:`state_dict` (e.g. one loaded from a checkpoint): the
        next step is the one that followed when the state was taken.

        :raises CheckpointError: naming what differs, if the state is from another
            model configuration or architecture, another optimizer, or a run on
            another number of processes.
        """
        check_config(state.get("config"), self.contract.config, what="model")
        load_weights(self.vae, state["model"], what=f"model ({type(self.vae).__name__})")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            _set_fused(self.optimizer, self.fused)
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"the checkpoint's optimizer state does not fit this optimizer ({type(self.optimizer).__name__}): {e}"
            ) from None
        if len(state["rng"]) != self.world_size:
            raise CheckpointError(
                f"the checkpoint holds the state of a run on {len(state['rng'])} processes, "
                f"this run has {self.world_size}; resume it with torchrun "
                f"--nproc_per_node {len(state['rng'])}"
                if len(state["rng"]) > 1
                else f"the checkpoint holds the state of a single-process run, this run has "
                f"{self.world_size} processes; resume it without torchrun"
            )
        self.epoch, self.step_count, self.epoch_step = state["epoch"], state["step"], state["epoch_step"]
        self._epoch_loss, self._epoch_seconds = state["epoch_loss"], state["epoch_seconds"]
        self.generator.set_state(state["generator"])
        self.history = History(**{"objective": self.label, **state["history"]})
        if self.averaged is not None:
            if "ema" not in state:
                raise CheckpointError(
                    "the checkpoint holds no moving average of the weights; resume it without ema_decay"
                )
            load_weights(self.averaged, state["ema"], what="moving average of the weights")
        self.best = state.get("best") if self.keep_best else None
        rng.set_state(state["rng"][self.rank], self.device)

    def check_finite(self):
        """Raise :class:`NonFiniteLossError` if a parameter holds NaN or inf (checked
        before a checkpoint is written, so that none holds them)."""
        bad = [name for name, p in self.vae.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            last = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint
                else "no checkpoint was saved"
            )
            raise NonFiniteLossError(
                f"parameters {', '.join(bad[:3])} hold NaN or inf after step "
                f"{self.step_count} (epoch {self.epoch + 1}); not saved, training "
                f"stopped there, {last}"
            )


def _check_config(config):
    """Refuse settings no trainer can run with, naming the setting (one line each)."""
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {config.batch_size}")
    if config.lr <= 0:
        raise ValueError(f"lr must be positive, got {config.lr}")
    if config.clip_norm is not None and not config.clip_norm > 0:
        raise ValueError(f"clip_norm must be positive (or None for no clipping), got {config.clip_norm}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    T = config.scheduled_epochs
    if config.lr_schedule != "constant" and not (isinstance(T, int) and T >= 1):
        raise ValueError(
            f"lr_schedule={config.lr_schedule!r} needs schedule_epochs (or epochs), a positive number "
            f"of epochs over which lr goes to lr_final, got {T!r}"
        )
    if config.lr_final is not None and not (0 < config.lr_final and math.isfinite(config.lr_final)):
        raise ValueError(f"lr_final must be a positive number, got {config.lr_final}")
    if not (config.kl_warmup >= 0 and math.isfinite(config.kl_warmup)):
        raise ValueError(f"kl_warmup must be a number of epochs ≥ 0, got {config.kl_warmup}")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise ValueError(f"ema_decay must lie in (0, 1) (or None for no averaging), got {config.ema_decay}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    if not isinstance(config.particles, int) or config.particles < 1:
        raise ValueError(f"particles must be a positive integer, got {config.particles!r}")


def _scaled_by_batch(fn, num_data):
    """``fn`` with every site scaled by N/B, B the size of its first argument."""

    def scaled(*args, **kwargs):
        return poutine.scale(fn, num_data / args[0].shape[0])(*args, **kwargs)

    return scaled


def _compile_networks(vae):
    """``torch.compile`` in place every submodule of ``vae`` named ``encoder`` or ``decoder``
    (the networks only: what Pyro runs around them stays eager)."""
    nets = [m for name, m in vae.named_modules() if name.rsplit(".", 1)[-1] in ("encoder", "decoder")]
    if not nets:
        raise ValueError(
            f"compile=True compiles the networks named 'encoder' or 'decoder', and {type(vae).__name__} has none"
        )
    for m in nets:
        m.compile()


def _set_fused(optimizer, fused):
    """After loading an optimizer state: step with this trainer's implementation, not the
    one the checkpoint's run used (a fused step keeps its step count on the parameters'
    device)."""
    for group in optimizer.param_groups:
        group["fused"] = True if fused else None
        if fused:
            group["foreach"] = None
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(p.device, torch.float32)


def _setup_guide(contract, data, batch_size, with_labels, num_data):
    """Let a lazily built guide (an autoguide such as :class:`~pyro_vae.amortized.AmortizedGuide`)
    make its parameters from the first batch, and a model that checks its parameters
    (a :class:`~pyro_vae.amortized.ModelGuide`) check them, before the optimizer is made; the
    global random generators (CPU, and the data's GPU) are left as they were."""
    setup, check = contract.setup, contract.check_parameters
    if setup is None and check is None:
        return
    with forked_rng((data.x,)), pyro.get_param_store().scope(), torch.no_grad():
        first = next(_batches(data, batch_size, False, torch.Generator().manual_seed(0), with_labels))
        kwargs = {"num_data": num_data} if contract.takes_num_data else {}
        if setup is not None:
            setup(*first, **kwargs)
        if check is not None:
            check(*first, **kwargs)


def _check_batch_size(n, batch_size):
    """A decaying-average baseline keeps one average per position in the batch (Pyro's
    ``use_decaying_avg_baseline``), so every batch must have the same size."""
    if n % batch_size:
        raise ValueError(
            f"the decaying-average baseline (also part of baseline='neural') keeps one average per "
            f"position in the batch, so every "
            f"batch must have the same size, but {n} training points make a last batch of "
            f"{n % batch_size} with batch_size={batch_size}; choose a batch size that divides {n}"
        )


def _check(contract, data):
    """Refuse data the model (its :class:`~pyro_vae.contract.Contract`) cannot train on, naming
    the problem: images of another size than the model's, NaN or inf values, grey levels
    outside [0, 1] for dynamic binarization, and values the likelihood does not support."""
    shape, x_dim = contract.image_shape, contract.x_dim
    if x_dim is not None and data.x.shape[-1] != x_dim:
        raise ValueError(
            f"{data.name}: the images have {data.x.shape[-1]} values "
            f"(image shape {tuple(data.image_shape)}), but the model was built for "
            f"{x_dim}{f' (image shape {tuple(shape)})' if shape else ''}"
        )
    finite = torch.isfinite(data.x)
    if not finite.all():
        raise ValueError(f"{data.name}: the data hold {int((~finite).sum())} NaN or inf values")
    if data.binarize == "dynamic":
        if data.x.min() < 0 or data.x.max() > 1:
            raise ValueError(
                f"{data.name}: dynamic binarization draws Bernoulli(x) and needs grey levels "
                f"in [0, 1], got values in [{data.x.min():.4g}, {data.x.max():.4g}]"
            )
        return
    if contract.check_support is None:
        return
    try:
        contract.check_support(data.x)
    except ValueError as e:
        raise ValueError(f"{data.name}: {e}") from None


def final_weights(trainer):
    """Load into ``trainer.vae`` the weights to evaluate: those of the best validation epoch
    when kept (``keep_best``), else the moving average (``ema_decay``), else the last step's."""
    if trainer.best is not None:
        trainer.vae.load_state_dict(trainer.best["model"])
    elif trainer.averaged is not None:
        trainer.vae.load_state_dict(trainer.averaged.module.state_dict())


def fit(
    vae,
    train,
    valid=None,
    epochs=None,
    progress=True,
    callback=None,
    config=None,
    out=None,
    checkpoint_every=None,
    overwrite=False,
    **options,
):
    """Train ``vae`` with SVI and return its :class:`History`.

    :param int epochs: E (default: ``config.epochs``).
    :param TrainConfig config: the settings; keyword ``options`` replace its fields
        (objective, particles, lr, batch_size, seed, device, lr_schedule, kl_warmup,
        ema_decay, keep_best, ...), as for :class:`Trainer`.
    :param out: a run folder to write, as ``pyro-vae train --out`` does: under its lock,
        ``checkpoint.pt`` and ``run.json`` (the model's, the data's and the trainer's
        settings) at each epoch end and every ``checkpoint_every`` steps, so that
        :func:`pyro_vae.resume` ``(out, epochs=N)`` continues the run. The model must carry
        its builder's settings (``vae.config``, as :func:`~pyro_vae.models.build_model`'s
        models do) and ``train`` say where it came from (``train.source``, as
        :func:`~pyro_vae.data.load_dataset` sets it).
    :param bool overwrite: replace a run already in ``out``.

    At the end ``vae`` holds the weights to evaluate (:func:`final_weights`): those of the best
    validation epoch with ``keep_best=True``, else the moving average with ``ema_decay``,
    else the last step's.

    Example::

        train = load_dataset("digits", "train", binarize="dynamic")
        valid = load_dataset("digits", "valid", binarize="dynamic")
        vae = build_vae(train.image_shape, z_dim=8, hidden_dims=(128,))
        history = fit(vae, train, valid, epochs=20, objective="meanfield")
    """
    if epochs is not None:
        options["epochs"] = epochs
    trainer = Trainer(vae, train, valid, config, **options)
    epochs = trainer.config.epochs
    if out is None:
        history = trainer.run(epochs, progress=progress, callback=callback)
        final_weights(trainer)
        return history
    from ..config import DataConfig
    from ..runs.lock import RunLock
    from ..runs.schema import record
    from .checkpoints import Checkpointer, CheckpointError

    if trainer.contract.config is None:
        raise ValueError(
            f"fit(out=...) stores the model's settings to rebuild it on resume, and "
            f"{type(vae).__name__} has no config; build it with pyro_vae.build_model"
        )
    if not isinstance(getattr(train, "source", None), dict):
        raise ValueError(
            "fit(out=...) stores where the training data came from, and train has no source; "
            "load it with pyro_vae.load_dataset"
        )
    data = DataConfig.from_dict(train.source, where="train.source")
    with RunLock(out, what="run folder") as lock:
        if not overwrite and any((lock.folder / name).exists() for name in ("run.json", "checkpoint.pt")):
            raise CheckpointError(
                f"{out} already holds a run; continue it with pyro_vae.resume({str(out)!r}), "
                "or pass overwrite=True to replace it"
            )
        save = Checkpointer(out, every=checkpoint_every, run=record(vae, data, trainer, checkpoint_every))

        def on_epoch(t):
            save.on_epoch(t)
            if callback is not None:
                callback(t)

        history = trainer.run(epochs, progress=progress, callback=on_epoch, step_callback=save.on_step)
    final_weights(trainer)
    return history
