"""docs/cli.md is the parsers' own help, as ``python -m pyro_vae.cli.reference`` prints it."""

from pathlib import Path

from pyro_vae.cli import COMMANDS
from pyro_vae.cli.reference import markdown

REPO = Path(__file__).resolve().parents[2]


def test_docs_cli_page_is_the_current_help():
    page = markdown()
    assert all(f"## `pyro-vae {name}`" in page for name, _, _ in COMMANDS)
    assert "--objective" in page and "(default: " in page
    assert (REPO / "docs" / "cli.md").read_text() == page, (
        "docs/cli.md is stale: run python -m pyro_vae.cli.reference > docs/cli.md"
    )
