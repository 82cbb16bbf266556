"""pyro_vae.ops.compile: a function traced once per call signature and replayed; what the
signature holds."""

import pytest
import torch

from pyro_vae.ops.compile import TracedFunction

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("compile", [False, True], ids=["replayed", "compiled"])
def test_keyword_order_and_strides_are_part_of_the_signature(compile):
    """A graph's tensor inputs come in the order traced: keywords given in another order
    reach the same inputs; a tensor of the same shape with other strides (a column of a
    matrix) gets a graph of its own."""
    f = TracedFunction(torch.nn.Linear(1, 1), lambda *, a, b: a - 2 * b, compile=compile)
    a, b = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(f(a=a, b=b), a)
    torch.testing.assert_close(f(b=b, a=a), a)
    assert len(f.graphs) == 1
    column = torch.arange(8.0).reshape(4, 2)[:, 0]
    torch.testing.assert_close(f(a=column, b=b), column)
    assert len(f.graphs) == 2


@pytest.mark.parametrize("as_module", [False, True], ids=["a function of it", "the module itself"])
def test_a_parameter_of_another_layout_gets_a_graph_of_its_own(as_module):
    """The parameters' strides are part of a graph's key too (a weight stored transposed);
    the function traced may be the module itself, whose parameters stay its own."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    f = TracedFunction(linear, linear if as_module else lambda x: linear(x))
    x = torch.randn(5, 3)
    torch.testing.assert_close(f(x), linear(x).detach())
    assert all(type(p) is torch.nn.Parameter for p in linear.parameters())
    linear.weight.data = linear.weight.data.t().contiguous().t()  # same values, strides (1, 2)
    torch.testing.assert_close(f(x), linear(x).detach())
    assert len(f.graphs) == 2
