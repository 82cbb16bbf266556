#!/usr/bin/env bash
# The speed benchmarks on a GPU, in one run: the paired training table (NumPyro's JAX on
# the same GPU, the hand-written torch loop, the Trainer's settings) and the evaluation's
# time against the bare decoder products, for docs/speed.md.
#
# The GPU machine reaches no network and has no ../shared: prepare, once, in the
# repository's root on a machine with the package registries,
#
#   echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu
#   pip download --no-deps -d .gpu pyro-ppl==1.9.2 pyro-api==0.1.2     # pure Python wheels
#   gzip -c ../shared/data/binarized_mnist/binarized_mnist_train.amat > .gpu/binarized_mnist_train.amat.gz
#   gzip -c ../shared/data/binarized_mnist/binarized_mnist_valid.amat > .gpu/binarized_mnist_valid.amat.gz
#
# then run this script there with .gpu carried along (the results land in $OUT, or in
# ./gpu-out when OUT is unset). DEVICE=cpu runs the same steps on the CPU, with fewer
# images, to try the script itself.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/pyro-vae-gpu/data/binarized_mnist
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/pyro-vae-gpu/site .gpu/*.whl
export PYTHONPATH=/tmp/pyro-vae-gpu/site:$PWD PYTHONUNBUFFERED=1
for split in train valid; do
    gunzip -c ".gpu/binarized_mnist_$split.amat.gz" > "/tmp/pyro-vae-gpu/data/binarized_mnist/binarized_mnist_$split.amat"
done
DATA=/tmp/pyro-vae-gpu/data
{
    date -u
    git rev-parse --short HEAD 2>/dev/null || true
    python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__, 'cuda', torch.cuda.is_available())"
    python3 -c "import jax, numpyro; print('jax', jax.__version__, jax.devices(), 'numpyro', numpyro.__version__)" || true
    if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
} 2>&1 | tee "$OUT/machine.txt"
if [ "$DEVICE" = cuda ]; then EPOCHS=3; LIMIT=; EVAL_LIMIT=1000; else EPOCHS=1; LIMIT="--limit 5120"; EVAL_LIMIT=20; fi
# shellcheck disable=SC2086
python3 benchmarks/train_speed.py --data "$DATA" --device "$DEVICE" --epochs $EPOCHS $LIMIT --no-svi \
    --json "$OUT/train_rounds.json" 2>&1 | grep -v "^W[0-9]" | tee "$OUT/train_speed.txt"
python3 benchmarks/eval_speed.py --data "$DATA" --device "$DEVICE" --limit $EVAL_LIMIT --repeats 3 2>&1 \
    | grep -v "^W[0-9]" | tee "$OUT/eval_speed.txt"
