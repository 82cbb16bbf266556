"""Readers of the files data sets come in (``.amat`` text, IDX) and a download that
leaves no partial file behind."""

import gzip
import math
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch

from .images import DataError

# ---- readers -----------------------------------------------------------------------------
_AMAT_BYTES = np.zeros(256, dtype=np.uint8)
_AMAT_BYTES[[ord(" "), ord("\t"), ord("\r")]] = 1
_AMAT_BYTES[[ord("0"), ord("1")]] = 2
_AMAT_BYTES[ord("\n")] = 3


def read_amat(path, dim=784):
    """Read an ``.amat`` file of 0/1 values (one image per line) into ``(N, dim)`` float32.

    Every line is checked: it must hold exactly ``dim`` values, each ``0`` or ``1``,
    separated by spaces or tabs. Blank lines at the end of the file are ignored; a
    blank line between images is an error.

    :raises DataError: naming the file and the first bad line (and the value), for a
        missing or empty file, a line with another number of values, or a value other
        than 0 or 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path} is empty")
    if raw.size % (2 * dim) == 0:  # the usual layout, "v v ... v\n" on every line: checked in one pass
        rows = raw.reshape(-1, 2 * dim)
        values, gaps = rows[:, 0::2], rows[:, 1::2]
        if (
            ((values == ord("0")) | (values == ord("1"))).all()
            and (gaps[:, :-1] == ord(" ")).all()
            and (gaps[:, -1] == ord("\n")).all()
        ):
            return torch.from_numpy((values - ord("0")).astype(np.float32))
    ends = np.flatnonzero(raw == ord("\n"))  # the newline ending each line
    if ends.size == 0 or ends[-1] != raw.size - 1:
        ends = np.append(ends, raw.size)  # a last line without a newline

    def line_of(pos):
        return int(np.searchsorted(ends, pos))  # 0-based

    def bad_value(i):
        lo = ends[i - 1] + 1 if i else 0
        text = raw[lo : ends[i]].tobytes().decode("latin-1")
        bad = next(t for t in text.split() if t not in ("0", "1"))
        return DataError(
            f"{path}: line {i + 1} holds {bad[:20]!r}, a value other than 0 or 1 (an .amat file "
            "of binarized MNIST holds only 0/1 values)"
        )

    kind = _AMAT_BYTES[raw]  # 0: other, 1: space, 2: digit, 3: newline
    if not kind.all():
        raise bad_value(line_of(int(np.argmin(kind))))
    digit = kind == 2
    adjacent = digit[1:] & digit[:-1]  # "01", "11": one value of several digits
    if adjacent.any():
        raise bad_value(line_of(int(np.argmax(adjacent))))
    line_starts = np.concatenate([[0], ends[:-1] + 1])
    per_line = np.add.reduceat(digit.view(np.uint8), np.minimum(line_starts, raw.size - 1), dtype=np.int64)
    per_line[line_starts >= raw.size] = 0  # an empty last line
    filled = np.flatnonzero(per_line > 0)
    if filled.size == 0:
        raise DataError(f"{path} holds no values")
    n_images = int(filled[-1]) + 1  # blank lines after the last image are ignored
    wrong = np.flatnonzero(per_line[:n_images] != dim)
    if wrong.size:
        i = int(wrong[0])
        count = int(per_line[i])
        what = "is blank" if count == 0 else f"has {count} values"
        raise DataError(f"{path}: line {i + 1} {what}, expected {dim} (the file is truncated or corrupt)")
    values = raw[digit] - ord("0")
    return torch.from_numpy(values.reshape(n_images, dim).astype(np.float32))


#: IDX element types: code → (NumPy big-endian dtype, bytes per element).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, ndim=None):
    """Read a (gzipped, if the name ends in ``.gz``) IDX file into a tensor.

    The header is checked: two zero bytes, a known element type, ``ndim`` dimensions
    (when given), a whole header, and exactly as many data bytes as its sizes call for.

    :raises DataError: naming the file and the fault."""
    import zlib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid gzipped IDX file ({type(e).__name__}: {e})") from None
    if len(data) < 4:
        raise DataError(f"{path}: the IDX header is truncated ({len(data)} bytes, at least 4 needed)")
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic.hex()} (expected 0x0000TTNN: a known element "
            "type TT and the number of dimensions NN); the file is corrupt or not an IDX file"
        )
    dims = magic[3]
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: the IDX header says {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(
            f"{path}: the IDX header is truncated ({len(data)} bytes, {header} needed for {dims} dimensions)"
        )
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    need = math.prod(shape) * dtype.itemsize
    if len(data) - header != need:
        raise DataError(
            f"{path}: the IDX header gives shape {shape} ({need} bytes of data), but the file holds "
            f"{len(data) - header} bytes after it (truncated or corrupt)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


def download_file(url, dest):
    """Fetch ``url`` to ``dest`` through ``dest.part``, renamed when complete.

    :raises DataError: naming the URL and where to put the file by hand, when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({e}); without network, put the file at {dest}") from None
    os.replace(tmp, dest)
