"""The checked-in JSON Schemas are exactly what the models generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrelay.schemas import generate


def test_checked_in_schemas_match_the_models() -> None:
    assert generate.drifted() == [], "run: python -m genrelay.schemas.generate"


def test_check_fails_on_drift_and_generate_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0

    edited = tmp_path / "completion.v1.json"
    edited.write_text(edited.read_text().replace('"succeeded"', '"done"'))
    (tmp_path / "progress.v1.json").unlink()
    capsys.readouterr()
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "completion.v1.json is out of date; run python -m genrelay.schemas.generate",
        "progress.v1.json is out of date; run python -m genrelay.schemas.generate",
    ]

    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.drifted(tmp_path) == []
