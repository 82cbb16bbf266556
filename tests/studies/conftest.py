"""The studies are scripts beside the package (``studies/NAME.py``): their tests import them
from that folder."""

import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[2] / "studies"
if str(STUDIES) not in sys.path:
    sys.path.insert(0, str(STUDIES))
