"""Time of the float32 matrix products of the 784-400-50 VAE: aten's, oneDNN's and XLA's.

The products a training step at batch 256 computes (forward and backward; the largest is
256×784 · 784×400) and the decoder's products of one evaluation chunk (10,000 latent
rows), each timed as ``torch.mm`` (the BLAS torch is built with: MKL on x86), as
:func:`pyro_vae.ops.graph_passes.onednn_matmul` (what traced graphs run on CPU) and, when jax
is installed, as ``jax.jit(lambda a, b: a @ b)``. The three take turns, who goes first
alternating; the median of the rounds is reported.

    python benchmarks/matmul_speed.py              # torch's default threads
    python benchmarks/matmul_speed.py --threads 1
"""

import argparse
import statistics
import time

import torch

from pyro_vae.ops.graph_passes import onednn_available, onednn_matmul

#: (M, K, N) of a @ b: the step's forward and backward products, then one evaluation chunk's
SHAPES = (
    (256, 784, 400),
    (256, 400, 784),
    (784, 256, 400),
    (400, 256, 784),
    (256, 400, 100),
    (256, 50, 400),
    (10000, 50, 400),
    (10000, 400, 784),
)


def timed(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (median reported)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.rounds < 1:
        p.error(f"--rounds must be a positive integer, got {args.rounds}")
    if not onednn_available():
        p.error("this torch build has no oneDNN")
    try:
        import jax
        import jax.numpy as jnp

        matmul = jax.jit(lambda a, b: a @ b)
    except ImportError:
        jax = None
        print("XLA skipped: jax is not installed (pip install -e .[bench])")

    g = torch.Generator().manual_seed(0)
    print(f"float32, {torch.get_num_threads()} torch threads, median of {args.rounds} rounds; microseconds per product")
    print(f"{'M x K . K x N':22s} {'torch.mm':>10s} {'oneDNN':>10s} {'XLA':>10s} {'oneDNN/mm':>10s} {'XLA/mm':>8s}")
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        contenders = {"mm": lambda a=a, b=b: torch.mm(a, b), "onednn": lambda a=a, b=b: onednn_matmul(a, b, None)}
        if jax is not None:
            ja, jb = jnp.asarray(a.numpy()), jnp.asarray(b.numpy())
            contenders["xla"] = lambda ja=ja, jb=jb: matmul(ja, jb).block_until_ready()
        repeats = max(3, int(4e9 // (m * k * n)))  # about 4e9 multiply-adds per contender and round
        times = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name in list(contenders) if r % 2 == 0 else list(contenders)[::-1]:
                times[name].append(timed(contenders[name], repeats))
        med = {name: statistics.median(v) * 1e6 for name, v in times.items()}
        xla = f"{med['xla']:10.1f}" if "xla" in med else f"{'-':>10s}"
        xla_ratio = f"{med['xla'] / med['mm']:8.2f}" if "xla" in med else f"{'-':>8s}"
        print(
            f"{f'{m} x {k} . {k} x {n}':22s} {med['mm']:10.1f} {med['onednn']:10.1f} {xla} "
            f"{med['onednn'] / med['mm']:10.2f} {xla_ratio}"
        )


if __name__ == "__main__":
    main()
