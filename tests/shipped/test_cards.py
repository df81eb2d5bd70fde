"""Every shipped model has a card with the sections docs/models/README.md asks for; a model with a file
states the file's SHA-256 and its rebuild command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wsnodule_core.shipped import ShippedModel, shipped_models

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("Data and licence", "Split", "Training command", "Real-benchmark numbers", "Intended use and limits")


def card_problems(model: ShippedModel, text: str) -> list[str]:
    """What ``text``, the card of ``model``, lacks."""
    headings = re.findall(r"^## (.+?)\s*$", text, flags=re.MULTILINE)
    problems = [f"no '## {s}' section" for s in SECTIONS if s not in headings]
    if not text.startswith(f"# {model.name}"):
        problems.append(f"the title is not '# {model.name}'")
    for file, sha256 in model.files:
        if sha256 not in text:
            problems.append(f"the SHA-256 of {file} ({sha256}) is not stated")
    if model.trained:
        training = text.split("## Training command", 1)[-1].split("\n## ", 1)[0]
        if model.rebuild not in training:
            problems.append(f"'## Training command' does not give the rebuild command {model.rebuild!r}")
    return problems


def test_the_card_guide_names_every_section():
    guide = (ROOT / "docs" / "models" / "README.md").read_text()
    for section in SECTIONS:
        assert f"`## {section}`" in guide


@pytest.mark.parametrize("model", shipped_models(), ids=lambda m: m.name)
def test_every_shipped_model_has_a_complete_card(model):
    card = ROOT / model.card
    assert card.is_file(), f"{model.name}: no card {model.card}"
    assert card_problems(model, card.read_text()) == []


def test_a_trained_model_card_must_state_its_hash_and_rebuild_command():
    model = ShippedModel("nam", "nam", "nam.pt", "docs/models/nam.md", "x", sha256="ab" * 32,
                         rebuild="wsnodule train --method nam DATA --out RUN")
    body = "".join(f"## {s}\n\ntext\n\n" for s in SECTIONS)
    assert len(card_problems(model, f"# nam\n\n{body}")) == 2
    complete = body.replace("## Training command\n\ntext", f"## Training command\n\n`{model.rebuild}`, "
                            f"SHA-256 {model.sha256}")
    assert card_problems(model, f"# nam\n\n{complete}") == []
    assert card_problems(model, "# nam\n\n## Split\n") != []
