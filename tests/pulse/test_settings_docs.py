"""The configuration reference in docs/ is generated from pulse/settings.py and kept equal."""

from pathlib import Path

from pulse.settings import VARIABLES, configuration_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_markdown()


def test_readme_documents_every_variable_through_the_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert [v.name for v in VARIABLES if f"`{v.name}`" not in reference] == []
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()
