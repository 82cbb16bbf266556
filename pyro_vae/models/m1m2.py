r"""M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, section 3.2): the semi-supervised VAE M2
trained on the features of an unsupervised VAE M1, stacked into one model of the images.

M1 is a trained :class:`~pyro_vae.models.VAE` with prior N(0, I), kept fixed. Its guide's means,
standardized by their mean m and standard deviation s over the training images, are M2's data:

    f(x) = (μ_φ1(x) − m) / s,          μ_φ1(x) = E_q1[z1 | x]

and M2 (:class:`~pyro_vae.models.SemiSupervisedVAE`) is the generative model of those features,

    y ~ Cat(1/K),  z2 ~ N(0, I),  f ~ p_θ2(f | y, z2)    (Gaussian, learned scale by default)

with guide q(y | f) q(z2 | f, y), y observed for labelled images and summed out for the others.
The training loss is M2's (its bound on log p(f), not on log p(x)); M1's weights get no gradient.

Classification: argmax_y q(y | f(x)). Generation given a class: z2 ~ N(0, I),
f = E[f | y, z2], z1 = m + s·f, and x = E_θ1[x | z1] through M1's decoder.
"""

import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn

from .ssvae import SemiSupervisedVAE
from .vae import unique_name


class FeatureMap(nn.Module):
    """M1's fixed part, ``x -> f(x) = (μ_φ1(x) − m) / s`` and back, ``f -> E[x | z1 = m + s·f]``.

    :param nn.Module q: M1's guide family module, ``x -> q(z1|x)`` (a distribution with a ``mean``).
    :param nn.Module decoder: M1's decoder, ``z1 -> θ``.
    :param nn.Module likelihood: M1's likelihood module (``mean(θ)``, ``θ -> p(x|z1)``).
    :param int z_dim: d1, M1's latent size (the features' size).

    Its parameters have ``requires_grad=False`` and it stays in evaluation mode; the
    standardization m, s are buffers (``loc``, ``scale``), set by :meth:`standardize`.
    """

    def __init__(self, q, decoder, likelihood, z_dim):
        super().__init__()
        self.q, self.decoder, self.likelihood = q, decoder, likelihood
        self.z_dim = int(z_dim)
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        """M1 is fixed: it stays in evaluation mode whatever ``mode`` is."""
        return super().train(False)

    def load_vae(self, vae):
        """Take M1's weights from a :class:`~pyro_vae.models.VAE` of the same settings (its
        guide family module, decoder and likelihood); returns ``self``."""
        for name in ("q", "decoder", "likelihood"):
            getattr(self, name).load_state_dict(getattr(vae, name).state_dict())
        return self

    @torch.no_grad()
    def means(self, x, batch_size=1000):
        """μ_φ1(x), ``(N, d1)``, in batches of ``batch_size``."""
        return torch.cat([self.q(x[i : i + batch_size]).mean for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def standardize(self, x):
        """Set m and s to the mean and standard deviation of μ_φ1 over the images ``x`` (``(N, D)``)."""
        mu = self.means(x)
        self.loc.copy_(mu.mean(0))
        self.scale.copy_(mu.std(0).clamp_min(1e-6))
        return self

    @torch.no_grad()
    def forward(self, x):
        """f(x), ``(batch, d1)``."""
        return (self.means(x) - self.loc) / self.scale

    @torch.no_grad()
    def decode(self, f, mean=True):
        """E_θ1[x | z1 = m + s·f] (or a draw of x if not ``mean``), ``(*batch, D)``."""
        theta = self.decoder(self.loc + self.scale * f)
        return self.likelihood.mean(theta) if mean else self.likelihood(theta).sample()


class StackedSemiSupervisedVAE(PyroModule):
    r"""M1+M2: the semi-supervised VAE ``m2`` on the features ``features(x)`` of a fixed VAE M1.
    See the module's docstring for the model.

    ``model(x, y, num_data)`` and ``guide(x, y, num_data)`` take images, as the semi-supervised
    VAE's do (labels ``y`` given, or None / −1 to sum them out), and run ``m2``'s on f(x); its
    objective is :func:`~pyro_vae.models.ssvae.ssvae_objective`'s.

    :param FeatureMap features: M1's fixed feature map.
    :param SemiSupervisedVAE m2: M2, with ``x_dim`` = M1's latent size.
    :param int x_dim: D, values per image.
    :param str name: the prefix of its networks' names in Pyro's param store (default: ``"m1m2"``,
        ``"m1m2_1"``, … for successive models).
    """

    def __init__(self, features, m2, x_dim, name=None):
        # a name of its own ("m1m2", "m1m2_1", …) so that two stacks in one process never share M2's
        # parameters in Pyro's param store (M2's names are this one's, then ".m2")
        super().__init__(name=unique_name("m1m2") if name is None else name)
        if not isinstance(m2, SemiSupervisedVAE):
            raise TypeError(f"m2 must be a SemiSupervisedVAE, got {type(m2).__name__}")
        if m2.x_dim != features.z_dim:
            raise ValueError(f"M2 models {m2.x_dim} values per point but M1 gives {features.z_dim} features")
        self.features = features
        self.m2 = m2
        self.x_dim = int(x_dim)

    @property
    def condition(self):
        """M2's label condition (K classes)."""
        return self.m2.condition

    @property
    def num_classes(self):
        return self.m2.num_classes

    def _features(self, x):
        if x is None:
            return None
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(f"x must have shape (batch, {self.x_dim}), got {tuple(x.shape)}")
        return self.features(x)

    @pyro_method
    def model(self, x=None, y=None, num_data=None, batch_size=None):
        """M2's model p(y) p(z2) p(f | y, z2) of the features f = f(x) (sampled if ``x`` is None)."""
        return self.m2.model(self._features(x), y, num_data=num_data, batch_size=batch_size)

    @pyro_method
    def guide(self, x=None, y=None, num_data=None, batch_size=None):
        """M2's guide q(y | f) q(z2 | f, y) on f = f(x)."""
        if x is None:
            raise ValueError(f"the guide q(y|f(x)) q(z2|f(x),y) needs the images x, (batch, {self.x_dim})")
        return self.m2.guide(self._features(x), y, num_data=num_data, batch_size=batch_size)

    def prepare_data(self, data):
        """Labelled images as the semi-supervised VAE takes them (labels in 0..K−1, or −1)."""
        return self.m2.prepare_data(data)

    @torch.no_grad()
    def predict_proba(self, x):
        """q(y | f(x)), ``(batch, K)``."""
        return self.m2.predict_proba(self._features(x))

    @torch.no_grad()
    def classify(self, x):
        """argmax_y q(y | f(x)), ``(batch,)`` int64."""
        return self.predict_proba(x).argmax(dim=-1)

    @torch.no_grad()
    def sample(self, n=None, c=None, mean=True):
        """Images given the class: z2 ~ N(0, I), f = E[f | c, z2] (a draw if not ``mean``), decoded
        by M1 (E[x | z1], or a draw). ``c`` and ``n`` as :meth:`ConditionalVAE.sample`; ``(n, D)``."""
        return self.features.decode(self.m2.sample(n=n, c=c, mean=mean), mean=mean)
