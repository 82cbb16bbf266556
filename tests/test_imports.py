"""``import pyro_vae`` stays light: matplotlib, ArviZ and scikit-learn load only when a
module that needs them is imported (plots, the NUTS checks, the digits data), and
:mod:`pyro_vae.eval` imports its ArviZ module on first use."""

import json
import subprocess
import sys

HEAVY = ("matplotlib", "arviz", "sklearn")


def test_import_pyro_vae_loads_no_plotting_or_arviz_or_sklearn():
    code = f"""
import json, sys
import pyro_vae, pyro_vae.eval
light = [m for m in {HEAVY!r} if m in sys.modules]
from pyro_vae.eval import posterior
print(json.dumps(dict(light=light, arviz="arviz" in sys.modules,
                      same=pyro_vae.eval.nuts_posterior is posterior.nuts_posterior)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == dict(light=[], arviz=True, same=True)
