"""Time of the importance-sampled log-likelihood against the bare decoder matrix products.

``pyro_vae.eval.log_likelihood`` with K = 5000 samples per image (the standard
NLL evaluation of a VAE) on n images of static binarized MNIST, against a lower bound
on any implementation: the same n × K latent rows pushed through the same decoder
``nn.Linear`` layers as bare ``torch.addmm`` calls (no activation, no likelihood, no
sampling, no encoder), in the same chunks. Both run in one process, alternating, and the
median of the repeats is compared.

    python benchmarks/eval_speed.py --data ../shared/data             # 10,000 images
    python benchmarks/eval_speed.py --data ../shared/data --limit 200 # a quick run
    python benchmarks/eval_speed.py --data ../shared/data --limit 200 --threads 1

``log_likelihood(..., traced=True)`` (the log weights of each chunk shape from one traced,
compiled graph) is timed beside them, unless ``--no-traced``. On CPU its graphs compute
the matrix products with aten's BLAS or with oneDNN
(``pyro_vae.ops.graph_passes.onednn_matmuls``), whichever ``pyro_vae.ops.kernels`` timed
faster for their shapes on this machine (printed after the table), so the same bare
products as oneDNN calls are timed too, and each contender is given as a ratio to both.

The model is the 784-400-50 MLP VAE (``--run RUN_DIR`` for a trained one; the weights
do not change the time).
"""

import argparse
import statistics
import time

import torch

from pyro_vae import build_vae, load_dataset
from pyro_vae.eval import log_likelihood


def linear_layers(decoder):
    """The decoder's ``nn.Linear`` layers, in order."""
    layers = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    if not layers:
        raise ValueError("the decoder has no nn.Linear layers to time")
    return layers


@torch.no_grad()
def bare_matmuls(layers, n, num_samples, batch_size, chunk_size, device, onednn=False):
    """Push n × num_samples rows through ``layers`` as ``addmm`` calls (``onednn``: as
    oneDNN products, :func:`pyro_vae.ops.graph_passes.onednn_matmul`, which the traced graphs
    use on CPU), in chunks of ``min(chunk_size, …) × batch_size`` rows, as log_likelihood
    does; return seconds."""
    product = _onednn_addmm if onednn else torch.addmm
    z_dim = layers[0].in_features
    z = torch.randn(chunk_size * batch_size, z_dim, device=device)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        done = 0
        while done < num_samples:
            c = min(chunk_size, num_samples - done)
            h = z[: c * b]
            for layer in layers:
                h = product(layer.bias, h, layer.weight.t())
            done += c
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _onednn_addmm(bias, a, b):
    """bias + a @ b as the traced graphs compute it on CPU (oneDNN)."""
    from pyro_vae.ops.graph_passes import onednn_matmul

    return onednn_matmul(a, b, bias)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--run", default=None, help="a trained run folder (default: a fresh 784-400-50 VAE)")
    p.add_argument("--limit", type=int, default=10000, help="number of validation images n (default 10,000)")
    p.add_argument("-K", "--num-samples", type=int, default=5000, help="importance samples per image")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch")
    p.add_argument("--chunk-size", type=int, default=100, help="samples per chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-traced", action="store_true", help="skip log_likelihood(..., traced=True)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is faster on a crowded machine)",
    )
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("limit", "num_samples", "batch_size", "chunk_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")

    device = torch.device(args.device)
    valid = load_dataset("binarized-mnist", "valid", root=args.data)
    x = valid.x[: args.limit].to(device)
    n = x.shape[0]
    if args.run:
        from pyro_vae import load_run

        vae, _ = load_run(args.run, device)
    else:
        torch.manual_seed(0)
        vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=(400,)).to(device)
    layers = linear_layers(vae.decoder)
    kw = dict(num_samples=args.num_samples, batch_size=args.batch_size, chunk_size=args.chunk_size)

    def timed(fn):
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, value

    # warm-up on a few images (for traced: one chunk of the timed shape, compiled), then
    # alternate the contenders
    warm = x[: min(n, args.batch_size)]
    log_likelihood(vae, warm, num_samples=args.chunk_size, batch_size=args.batch_size, chunk_size=args.chunk_size)
    warmup = None
    if not args.no_traced:
        warmup, _ = timed(
            lambda: log_likelihood(
                vae,
                warm,
                num_samples=args.chunk_size,
                batch_size=args.batch_size,
                chunk_size=args.chunk_size,
                traced=True,
            )
        )
    from pyro_vae.ops.graph_passes import onednn_available

    onednn = device.type == "cpu" and onednn_available()
    bare_matmuls(layers, min(n, 2), args.chunk_size, args.batch_size, args.chunk_size, device)
    times = {
        "log_likelihood": [],
        "log_likelihood, traced=True": [],
        "bare decoder addmm": [],
        "bare decoder oneDNN": [],
    }
    if args.no_traced:
        del times["log_likelihood, traced=True"]
    if onednn:
        bare_matmuls(layers, min(n, 2), args.chunk_size, args.batch_size, args.chunk_size, device, onednn=True)
    else:
        del times["bare decoder oneDNN"]
    nll = {}
    for _ in range(args.repeats):
        t, nll["log_likelihood"] = timed(lambda: -log_likelihood(vae, x, **kw).mean().item())
        times["log_likelihood"].append(t)
        if not args.no_traced:
            t, nll["traced"] = timed(lambda: -log_likelihood(vae, x, traced=True, **kw).mean().item())
            times["log_likelihood, traced=True"].append(t)
        times["bare decoder addmm"].append(
            bare_matmuls(layers, n, args.num_samples, args.batch_size, args.chunk_size, device)
        )
        if onednn:
            times["bare decoder oneDNN"].append(
                bare_matmuls(layers, n, args.num_samples, args.batch_size, args.chunk_size, device, onednn=True)
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    mm, dnn = med["bare decoder addmm"], med.get("bare decoder oneDNN")
    shapes = " -> ".join([str(layers[0].in_features)] + [str(m.out_features) for m in layers])
    print(
        f"{n} images x K={args.num_samples} samples = {n * args.num_samples:,} decoder rows ({shapes}), "
        f"batch {args.batch_size} images x chunk {args.chunk_size} samples, device {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, t in med.items():
        extra = ""
        if name == "log_likelihood":
            extra = f"   NLL {nll['log_likelihood']:.4f} nats"
        elif name.endswith("traced=True"):
            extra = f"   NLL {nll['traced']:.4f} nats; first call on one chunk (compiling) {warmup:.1f} s"
        to_dnn = f", to oneDNN's {t / dnn:.2f}" if dnn else ""
        print(f"{name:28s} {t:9.2f} s   ratio to the bare addmm {t / mm:.2f}{to_dnn}{extra}")
    if not args.no_traced:
        from pyro_vae.ops import kernels

        for c in kernels.choices()["matmul"].values():
            print(
                f"traced graphs' products: {c['kernel']} (timed here: aten {c['seconds']['aten'] * 1e3:.3f} ms, "
                f"oneDNN {c['seconds']['onednn'] * 1e3:.3f} ms)"
            )
        for c in kernels.choices()["log1p_free"].values():
            print(
                f"log1p-free rewrite: {'applied' if c['rewrite'] else 'not applied'} (timed here: plain "
                f"{c['seconds']['plain'] * 1e3:.3f} ms, rewritten {c['seconds']['log1p_free'] * 1e3:.3f} ms)"
            )
    return {k: t / mm for k, t in med.items()}


if __name__ == "__main__":
    main()
