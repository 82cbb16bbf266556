r"""Data-parallel training on many processes with :mod:`torch.distributed`.

Launch the ordinary command under ``torchrun``; it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, from which every process joins
one process group (``gloo`` on CPUs, ``nccl`` on GPUs)::

    torchrun --nproc_per_node 2 -m pyro_vae.cli train --dataset binarized-mnist --data DATA --out runs/ddp

What each of the W processes does (:class:`~pyro_vae.train.trainer.Trainer` calls the
functions below when the process group holds more than one process):

1. **Same start.** Rank 0's parameters and buffers are broadcast to every rank
   (:func:`broadcast_module`), so the replicas start identical.
2. **Same global batch, one shard each.** Every rank draws the *same* seeded
   permutation of the N training points (the trainer's batch generator has the same
   seed everywhere) and so sees the same global batch of B points; rank r keeps its
   contiguous slice of b_r ≈ B/W points (:func:`shard`): a distributed sampler
   whose global batches are exactly those of a single-process run.
3. **The ELBO stays scaled to the whole data set.** Model and guide are still called
   with ``num_data = N`` (the full training set), so rank r's loss is the
   minibatch estimate (N / b_r) Σ_{n∈shard r} ℓ_n of the full-data loss, divided by N
   as always: ℓ̄_r = (1/b_r) Σ_{n∈shard r} ℓ_n.
4. **Gradient averaging** (:func:`all_reduce_gradients`). After ``backward`` each
   rank's gradient is weighted by its share b_r / B and summed over ranks:

       g = Σ_r (b_r / B) ∇ℓ̄_r = (1/B) Σ_{n∈global batch} ∇ℓ_n,

   exactly the gradient a single process computes on the global batch (up to the
   Monte Carlo draws of z, which come from each rank's own generator, seeded
   ``seed + rank``). Shards may differ in size (the last, partial batch), which is
   why the weights are b_r / B rather than 1/W. Every rank then takes the same
   optimizer step, so the replicas stay identical without further communication.
5. **Rank 0 writes.** Checkpoints, ``run.json`` and figures are written by rank 0
   only; validation runs on rank 0. The checkpoint holds every rank's RNG states
   (gathered with :func:`all_gather_object`) so a data-parallel run resumes exactly.

Why not :class:`torch.nn.parallel.DistributedDataParallel`? DDP averages gradients
through autograd hooks that it arms only inside ``DDP.forward``. Pyro's ELBOs never
call a module's ``forward``: they run ``vae.model`` and ``vae.guide`` (methods that
call the encoder, decoder and likelihood modules directly) under poutine traces, so
a DDP wrapper around the VAE would leave its hooks unarmed and the gradients silently
unaveraged. Wrapping the whole loss in a module's ``forward`` would work for
``Trace_ELBO.differentiable_loss``, but not for objectives such as
``TraceGraph_ELBO`` that compute their gradients inside Pyro's ``loss_and_grads``.
Averaging after ``backward`` works for every objective. It is what DDP does with a
single gradient bucket: one ``all_reduce`` of one flat buffer per step, here without
overlapping communication and backward, a cost that is small next to the step for
models of this size.
"""

import atexit
import datetime
import os

import torch
import torch.distributed as dist

#: Seconds a rank waits in a collective (a gradient all-reduce, a broadcast, the
#: gathering of RNG states at a checkpoint) before it gives up with an error: long
#: enough for rank 0's validation and checkpoint writes between steps, short enough
#: that a stalled or vanished rank stops the others within minutes rather than the
#: 30 minutes of torch's default. ``pyro-vae train --ddp-timeout`` sets it.
DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """A collective failed: a rank stalled past the timeout, or stopped."""

    @classmethod
    def explain(cls, error, timeout, last_checkpoint=None):
        """A one-line error for a failed collective (``error``, from the backend)."""
        text = str(error)
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        if "timed out" in text.lower() or "timeout" in text.lower():
            why = f"no answer from the other ranks within --ddp-timeout {timeout:g} s (a rank stalled or is stuck)"
        elif "closed" in text.lower() or "reset" in text.lower() or "broken pipe" in text.lower():
            why = "another rank stopped (its connection closed)"
        else:
            why = "a collective operation failed"
        last = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
        return cls(f"rank {rank()}: {why}; training stopped, {last} [{first[:200]}]")


def launched_by_torchrun():
    """True when the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device="cpu", timeout=DEFAULT_TIMEOUT):
    """Join the process group described by torchrun's environment, if any.

    Backend ``nccl`` when ``device`` is a CUDA device (each process then takes the GPU
    ``cuda:LOCAL_RANK``), ``gloo`` otherwise. Without torchrun (``WORLD_SIZE`` unset or
    1) nothing happens.

    :param str device: the device asked for (``"cpu"``, ``"cuda"``).
    :param float timeout: seconds a collective waits for the other ranks before it
        fails (:data:`DEFAULT_TIMEOUT`); with ``nccl``, asynchronous error handling is
        switched on so that the timeout aborts the wait instead of hanging.
    :returns: the device this process trains on.
    """
    if not launched_by_torchrun():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        if cuda:
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=float(timeout)))
        atexit.register(destroy)
    return device


def is_initialized():
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size():
    """The number of processes W (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main():
    """True on the process that writes files (rank 0)."""
    return rank() == 0


def shard(batch, rank, world_size):
    """Rank ``rank``'s slice of a global batch.

    The B rows are cut into W contiguous pieces with :func:`torch.tensor_split`
    (sizes ⌈B/W⌉ or ⌊B/W⌋; a piece may be empty when B < W).

    :param tuple batch: tensors (or None) whose first dimension is the batch, e.g.
        ``(x,)`` or ``(x, y)``.
    :returns: ``(pieces, share)`` with ``share = b_r / B``, the weight of this rank's
        mean loss in the global batch's mean loss.
    """
    size = batch[0].shape[0]
    pieces = tuple(t.tensor_split(world_size)[rank] if t is not None else None for t in batch)
    return pieces, pieces[0].shape[0] / size


@torch.no_grad()
def broadcast_module(module, src=0):
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src)


@torch.no_grad()
def all_reduce_gradients(params, loss, share):
    r"""Replace each rank's gradients by the global-batch gradient Σ_r share_r ∇ℓ̄_r.

    One ``all_reduce`` (sum) of one flat buffer holding, for this rank, ``share`` times
    every gradient and the loss, and a 0/1 flag per parameter saying whether it has a
    gradient; a parameter that has no gradient on any rank keeps ``grad = None`` (as a
    single process would leave it, so the optimizer skips it).

    :param list params: the parameters, in the same order on every rank.
    :param float loss: this rank's mean loss ℓ̄_r (NaN or inf propagate to all ranks,
        so that every rank stops at the same step).
    :param float share: b_r / B.
    :returns: the global batch's mean loss Σ_r share_r ℓ̄_r.
    """
    ref = params[0]
    flat = torch.cat(
        [p.grad.reshape(-1) if p.grad is not None else ref.new_zeros(p.numel()) for p in params]
        + [ref.new_tensor([loss])]
    )
    flat.mul_(share)
    flags = ref.new_tensor([float(p.grad is not None) for p in params])
    flat = torch.cat([flat, flags])
    dist.all_reduce(flat)
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if flat[-len(params) + i] > 0:
            p.grad = flat[offset : offset + n].view_as(p)
        offset += n
    return flat[offset].item()


def all_gather_object(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    """Wait for every rank (nothing without a process group)."""
    if is_initialized():
        dist.barrier()


def destroy():
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
