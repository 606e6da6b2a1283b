"""The README documents every setting with its default (generated, so it cannot drift)."""

from __future__ import annotations

from pathlib import Path

from genrelay.consumer.service.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_with_its_default() -> None:
    assert Settings.reference() in README.read_text()


def test_readme_names_the_test_command_that_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "deploy/local/test.sh" in ci
    assert "deploy/local/test.sh    # run the whole test suite" in README.read_text()
