"""params.yaml is strict: unknown keys, wrong types and bad values are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mert.params import ParamsError, load_params, load_section

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params["ingest"].sample_rate == 24000 and params["ingest"].min_seconds == 3.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("ingest:\n  sampel_rate: 16000\n", "unknown key"),
        ("ingest:\n  sample_rate: fast\n", "expected an integer"),
        ("ingest:\n  min_seconds: 10\n  max_seconds: 5\n", "must exceed"),
        ("ingest:\n  workers: true\n", "expected an integer"),
        ("nosuchsection: {}\n", "unknown section"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_params_are_rejected(tmp_path: Path, text: str, match: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=match):
        load_params(path)


def test_overrides_and_defaults(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  min_seconds: 2.0\n")
    p = load_section("ingest", path, {"workers": 1})
    assert (p.min_seconds, p.workers, p.sample_rate) == (2.0, 1, 24000)
    assert load_section("ingest", tmp_path / "absent.yaml").min_seconds == 3.0
