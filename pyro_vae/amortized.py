r"""An amortized guide for any Pyro model whose latents are local to a data plate.

Pyro's autoguides (``AutoNormal``, ``AutoMultivariateNormal``, …) learn one posterior
per data point; :class:`AmortizedGuide` learns a network instead, so it encodes a new x:

    u_n ~ q_φ(u | h_n),   h_n = inputs(x)_n,   u_n = [u_n^(1), …, u_n^(S)] ∈ ℝ^T,
    z_n^(s) = T_s(u_n^(s)),   T_s = biject_to(support of site s),

one joint draw u_n per element n of the data plate, over all S local latent sites of the
model together (a diagonal Normal, a full-covariance Normal through its Cholesky factor,
or a conditional flow: the families of :mod:`pyro_vae.guides`), split back into the
model's sites and mapped to their supports. As in Pyro's ``AutoContinuous`` guides, the
joint draw is an auxiliary site and each model site gets a ``Delta`` carrying
log |det ∂T_s^{-1}/∂z|, so

    log q(z_n | x_n) = log q_φ(u_n | h_n) − Σ_s log |det ∂T_s/∂u^(s)|.

A model with a single real-valued site ``z`` of event shape ``(d,)`` gets the family's
distribution at that site directly (no auxiliary site), so that
``TraceMeanField_ELBO`` can use a closed-form KL.

Latents outside the data plate (global latents) are left to another guide, e.g.::

    guide = AutoGuideList(model, create_plates=lambda x, **kw: pyro.plate("data", x.shape[0]))
    guide.append(AutoNormal(poutine.block(model, expose=["bias"])))
    guide.append(AmortizedGuide(poutine.block(model, hide=["bias"])))

(``create_plates`` makes the list's data plate follow the batch, as minibatches need.)
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from torch.distributions import biject_to

from .guides import guide_family
from .models import unique_name
from .networks import MLPEncoder, MultiHead


def _is_real(support):
    """Whether ``support`` is ℝ^event (``real`` made independent over any event dims)."""
    while isinstance(support, dist.constraints.independent):
        support = support.base_constraint
    return support is dist.constraints.real


def first_argument(*args, **kwargs):
    """The default ``inputs``: the model's first positional argument, flattened per
    element of the data plate, ``(B, −1)``."""
    if not args or not torch.is_tensor(args[0]):
        raise ValueError(
            "AmortizedGuide reads the model's first positional argument x (a tensor whose first "
            "dimension runs over the data plate); pass inputs=callable(*args, **kwargs) -> (B, k) "
            "to read something else"
        )
    x = args[0]
    if x.dim() < 1:
        raise ValueError(f"x must have a first dimension over the data plate, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


class AmortizedGuide(AutoGuide):
    r"""An amortized guide q_φ(z|x) for the local latents of a Pyro model (see the module
    docstring for the math).

    :param callable model: a Pyro model whose latent sites inside the data plate are
        continuous. It is run once, on the first call, to find them (as Pyro's autoguides do).
    :param family: ``"diagonal"``, ``"full"`` or ``"flow"`` (:data:`pyro_vae.guides.GUIDES`),
        or a family class.
    :param hidden_dims: hidden sizes of the encoder MLP ``h -> family outputs``; ``()``
        makes the encoder linear in h (exact for linear-Gaussian models).
    :param callable inputs: ``inputs(*args, **kwargs) -> (B, k)``, what the encoder reads
        for each element of the data plate; default :func:`first_argument` (x flattened).
        A conditional model that also reads c would pass e.g.
        ``lambda x, c, **kw: torch.cat([x, c], -1)``.
    :param str plate: the name of the data plate (default: the one plate all local
        latent sites share).
    :param dict family_kwargs: options of the family (e.g. ``{"num_flows": 2}``).
    :param str name: the prefix of the guide's networks in Pyro's param store (default
        ``"amortized_guide"``, ``"amortized_guide_1"``, … for successive guides).

    When the model is called with a ``num_data=N`` keyword (a minibatch standing for N
    points), the guide scales its sites by N/B inside the plate, as
    :class:`~pyro_vae.models.VAE` does.
    """

    def __init__(
        self, model, family="diagonal", hidden_dims=(400,), inputs=None, plate=None, family_kwargs=None, name=None
    ):
        super().__init__(model)
        self._pyro_name = unique_name("amortized_guide") if name is None else name
        self.family_class = guide_family(family)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.inputs = inputs or first_argument
        self.plate_name = plate
        self.family_kwargs = dict(family_kwargs or {})
        self.sites = None

    # ---- the model, inspected once -------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        latents = [(name, site) for name, site in self.prototype_trace.iter_stochastic_nodes()]
        for name, site in latents:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"AmortizedGuide: the latent site {name!r} is discrete ({type(site['fn']).__name__}); "
                    "only continuous latents can be encoded (enumerate or marginalize it in the model)"
                )
        frame = self._data_frame(latents)
        self.plate_name, self.plate_dim = frame.name, frame.dim
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(
                f"AmortizedGuide: the data plate {frame.name!r} subsamples {frame.size} of "
                f"{frame.full_size} points; the guide encodes the batch it is given, so pass the "
                "minibatch as the plate's data (plate size B) and num_data=N for the N/B scale"
            )
        B = frame.size
        h = self.inputs(*args, **kwargs)
        if not torch.is_tensor(h) or h.dim() != 2 or h.shape[0] != B:
            raise ValueError(
                f"AmortizedGuide: inputs(*args) must give one row per element of the plate "
                f"{frame.name!r} (shape ({B}, k)), got "
                f"{tuple(h.shape) if torch.is_tensor(h) else type(h).__name__}"
            )
        self.sites, start = [], 0
        self.global_sites = []
        for name, site in latents:
            if not any(f.name == frame.name for f in site["cond_indep_stack"]):
                self.global_sites.append(name)
                continue
            fn = site["fn"]
            batch = tuple(fn.batch_shape)
            if len(batch) != -frame.dim or batch[frame.dim] != B or math.prod(batch) != B:
                raise ValueError(
                    f"AmortizedGuide: the site {name!r} has batch shape {batch}; the guide encodes one "
                    f"value per element of the plate {frame.name!r} (size {B}, dim {frame.dim}), so "
                    f"its batch shape must be the plate's alone, {(B,) + (1,) * (-frame.dim - 1)} "
                    "(nested plates are not supported)"
                )
            scale = float(site["scale"]) if not torch.is_tensor(site["scale"]) or site["scale"].numel() == 1 else None
            expected = 1.0 if kwargs.get("num_data") is None else kwargs["num_data"] / B
            if scale is None or not math.isclose(scale, expected, rel_tol=1e-6):
                raise ValueError(
                    f"AmortizedGuide: the model scales the site {name!r} by {site['scale']}, but the guide "
                    f"scales its sites by {expected:g} (num_data={kwargs.get('num_data')} for a batch of "
                    f"{B}); the model must scale its data plate by num_data/B when it takes num_data"
                )
            unconstrained = biject_to(fn.support).inv(site["value"].detach())
            shape = tuple(unconstrained.shape[len(batch) :])
            size = math.prod(shape)
            self.sites.append(
                dict(
                    name=name,
                    batch_shape=batch,
                    shape=shape,
                    event_dim=fn.event_dim,
                    support=fn.support,
                    start=start,
                    stop=start + size,
                )
            )
            start += size
        self.latent_dim = start
        family = self.family_class
        out_dims = family.encoder_out_dims(start)
        if self.hidden_dims:
            encoder = MLPEncoder(h.shape[-1], start, self.hidden_dims, out_dims=out_dims)
        else:
            encoder = MultiHead(torch.nn.Identity(), h.shape[-1], out_dims)
        self.q = family(encoder, z_dim=start, **self.family_kwargs).to(h.device)
        only = self.sites[0] if len(self.sites) == 1 else None
        #: one real-valued site of event shape (d,): sampled from the family directly
        self._direct = (
            only is not None and only["event_dim"] == 1 and len(only["batch_shape"]) == 1 and _is_real(only["support"])
        )

    def _data_frame(self, latents):
        def plates(site):
            return {f for f in site["cond_indep_stack"] if f.vectorized}

        local = [(name, site) for name, site in latents if plates(site)]
        if self.plate_name is not None:
            frames = {f for _, site in local for f in plates(site) if f.name == self.plate_name}
            if not frames:
                raise ValueError(
                    f"AmortizedGuide: no latent site of the model sits in a plate named {self.plate_name!r}"
                )
            return frames.pop()
        if not local:
            raise ValueError(
                "AmortizedGuide: no data plate found: no latent sample site of the model sits in a "
                f"pyro.plate (latent sites: {[name for name, _ in latents] or 'none'}); an amortized "
                "guide encodes the latents local to each data point"
            )
        common = set.intersection(*(plates(site) for _, site in local))
        if len(common) != 1:
            where = {name: sorted(f.name for f in plates(site)) for name, site in local}
            raise ValueError(
                f"AmortizedGuide: the local latent sites do not share exactly one plate ({where}); "
                "name the data plate with plate="
            )
        return common.pop()

    def _features(self, *args, **kwargs):
        """h = inputs(*args), ``(B, k)``, with B moved to the data plate's dim:
        ``(B, 1, …, 1, k)`` for a plate at dim −j, so the family's batch shape is the site's."""
        h = self.inputs(*args, **kwargs)
        return h.reshape(h.shape[:1] + (1,) * (-self.plate_dim - 1) + h.shape[1:])

    def setup(self, *args, **kwargs):
        """Run the model once to find its sites and build the encoder (done by the first
        call; call it before making a torch optimizer over :meth:`parameters`)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self

    # ---- the guide -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Draw every local latent site of the model for the batch in ``args``.

        :returns: ``{site name: value}``.
        """
        self.setup(*args, **kwargs)
        h = self._features(*args, **kwargs)
        B = h.shape[0]
        num_data = kwargs.get("num_data")
        family = self.q  # a pyro.module statement
        with self._plate(B, h.device), poutine.scale(scale=1.0 if num_data is None else num_data / B):
            q = family(h)
            if self._direct:
                site = self.sites[0]
                return {site["name"]: pyro.sample(site["name"], q)}
            u = pyro.sample(f"_{self._pyro_name}_latent", q, infer={"is_auxiliary": True})
            values = {}
            for site in self.sites:
                batch = u.shape[:-1]
                u_site = u[..., site["start"] : site["stop"]].reshape(batch + site["shape"])
                transform = biject_to(site["support"])
                value = transform(u_site)
                log_density = transform.inv.log_abs_det_jacobian(value, u_site)
                log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + site["event_dim"])
                values[site["name"]] = pyro.sample(
                    site["name"], dist.Delta(value, log_density=log_density, event_dim=site["event_dim"])
                )
            return values

    def _plate(self, B, device):
        """The data plate of B elements: this guide's own, or, inside an ``AutoGuideList``,
        the plate the list made (a plate is made once per call)."""
        plate = self.master().plates.get(self.plate_name) if self.master is not None else None
        if plate is None:
            return pyro.plate(self.plate_name, B, dim=self.plate_dim, device=device)
        if plate.size != B:
            raise ValueError(
                f"AmortizedGuide: the AutoGuideList's plate {self.plate_name!r} has {plate.size} "
                f"elements but the batch has {B}; give the list create_plates=lambda x, *a, **k: "
                f"pyro.plate({self.plate_name!r}, x.shape[0], dim={self.plate_dim}) so that it "
                "follows the batch"
            )
        return plate

    def encode(self, *args, **kwargs):
        """q_φ(u | h): the family's distribution over the joint unconstrained latents,
        batch shape the data plate's (``(B,)`` for a plate at dim −1), event shape ``(T,)``."""
        self.setup(*args, **kwargs)
        return self.q(self._features(*args, **kwargs))


class ModelGuide(torch.nn.Module):
    """A model and a guide as one module, for :func:`pyro_vae.fit` and the
    :class:`~pyro_vae.train.trainer.Trainer`, which step the parameters of
    ``ModelGuide.parameters()`` with a torch optimizer.

    :param model: a Pyro model: a :class:`torch.nn.Module` (e.g. a ``PyroModule``), a
        method of one, or a function without parameters of its own.
    :param guide: a guide module, e.g. :class:`AmortizedGuide`.
    :param example: the arguments of one call (e.g. ``(x_batch,)``); if given, a lazily
        built guide (an autoguide) is set up with them now, so that its parameters exist
        before an optimizer is made. The :class:`~pyro_vae.train.trainer.Trainer` does this
        itself with its first batch.

    Example::

        guide = AmortizedGuide(my_model, family="full")
        history = fit(ModelGuide(my_model, guide), train, valid, epochs=20)
    """

    def __init__(self, model, guide, example=None):
        super().__init__()
        owner = model if isinstance(model, torch.nn.Module) else getattr(model, "__self__", None)
        self.model_module = owner if isinstance(owner, torch.nn.Module) else None
        self.guide_module = guide if isinstance(guide, torch.nn.Module) else None
        self._pair = (model, guide)  # not registered twice as submodules
        if example is not None:
            setup = getattr(guide, "setup", None)
            if setup is not None:
                setup(*example)

    def check_parameters(self, *args, **kwargs):
        """Raise a ValueError naming the parameters that model or guide register
        (``pyro.param``, ``pyro.module``) but that are not among :meth:`parameters`, so
        that a torch optimizer over them would silently leave them as they are."""
        own = {id(p) for p in self.parameters()}
        with poutine.trace(param_only=True) as capture, torch.no_grad():
            guide_trace = poutine.trace(self.guide).get_trace(*args, **kwargs)
            poutine.replay(self.model, trace=guide_trace)(*args, **kwargs)
        missing = []
        for name, site in capture.trace.nodes.items():
            value = site["value"]
            unconstrained = value.unconstrained() if hasattr(value, "unconstrained") else value
            if id(unconstrained) not in own:
                missing.append(name)
        if missing:
            raise ValueError(
                f"the model or guide registers parameters that are not in the modules ModelGuide holds: "
                f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; fit steps only those "
                "modules' parameters, so write the model as a PyroModule (or a method of one) that "
                "owns its networks and parameters, or train it with pyro.infer.SVI"
            )

    @property
    def model(self):
        return self._pair[0]

    @property
    def guide(self):
        return self._pair[1]
