"""Pyro programs traced into compiled graphs, on public interfaces where torch has them
(the private ones in :mod:`pyro_vae._compat`):

- :mod:`.compile`: trace once per call signature with ``make_fx``, compile with
  inductor, replay (:class:`~.compile.TracedFunction`);
- :mod:`.graph_passes`: rewrites of the traced aten graphs (oneDNN products, log1p-free
  softplus and Bernoulli log-density);
- :mod:`.kernels`: which products' kernel and which rewrites a graph gets, chosen by
  timing them on the machine at hand.
"""

from . import compile, graph_passes, kernels
from .compile import TracedFunction, TracingError

__all__ = ["compile", "graph_passes", "kernels", "TracedFunction", "TracingError"]
