"""Real scores from the music21 corpus: allowlist (J. S. Bach never used), keys, ties, beats."""

from __future__ import annotations

import pytest

from mert.data.scores import (
    BACH,
    COLLECTIONS,
    ScoreError,
    _notes,
    abc_key_field,
    check_allowed,
    corpus_root,
    list_sources,
    parse_source,
    transpose_key,
)


@pytest.mark.parametrize("path", ["bach/bwv66.6.mxl", "cpebach/h186.mxl", "demos/chorale_with_parallels.mxl"])
def test_reserved_collections_are_refused(path):
    with pytest.raises(ScoreError, match="reserved"):
        check_allowed(path)
    with pytest.raises(ScoreError, match="reserved"):
        parse_source(path)


def test_unknown_collection_is_refused():
    with pytest.raises(ScoreError, match="allowlist"):
        check_allowed("theoryExercises/test.xml")


def test_no_source_comes_from_bach():
    sources = list_sources()
    assert len(sources) > 3000  # abc collections are split into their tunes
    assert all(s.collection in COLLECTIONS and not BACH.search(s.path.split("/")[0]) for s in sources)
    assert not [s for s in sources if BACH.search(s.path)]  # "Bachelor" reels are fine, "Bach" is not
    assert {s.collection for s in sources} >= {"ryansMammoth", "oneills1850", "palestrina", "monteverdi", "haydn"}


@pytest.mark.parametrize(
    "field, expected",
    [("G", ("G major", "major")), (" Am", ("A minor", "minor")), ("E Minor", ("E minor", "minor")),
     ("Bb", ("Bb major", "major")), ("F#m", ("F# minor", "minor")), ("A Dorian", (None, "dorian")),
     ("AMix", (None, "mixolydian")), ("Hp", (None, None))],
)  # fmt: skip
def test_abc_key_field(field, expected):
    assert abc_key_field(field) == expected


def test_transpose_key():
    assert transpose_key("G major", 2) == "A major"
    assert transpose_key("B minor", 1) == "C minor"
    assert transpose_key("C major", -1) == "B major"


def test_tune_key_beats_and_pickup():
    (piece,) = parse_source("ryansMammoth/AcaciaReel.abc")
    assert piece.key == "G major"  # K:G; music21's analysis alone would say E minor (same signature)
    assert len(piece.parts) == 1 and piece.n_notes > 100
    assert piece.beats[0] == 0.5  # a pickup of 0.5 quarter: beats fall on the full bar's grid (2/4, quarter beats)
    assert all(abs(b - a - 1.0) < 1e-6 for a, b in zip(piece.beats, piece.beats[1:]))
    assert piece.downbeats[0] == 0.5


def test_multi_tune_abc_file_gives_one_tune_by_number():
    (piece,) = parse_source("oneills1850/0001-0050.abc#13")
    assert piece.source.endswith("#13") and piece.title


def test_ensemble_key_from_signature_and_analysis():
    (piece,) = parse_source("haydn/opus74no1/movement1.mxl")
    assert piece.key == "C major" and len(piece.parts) == 4


def test_tie_merging_equals_music21_strip_ties():
    from music21 import converter

    score = converter.parse(corpus_root() / "mozart/k80/movement1.mxl")
    for part in score.parts[:2]:
        ours = sorted((n.onset, n.duration, n.pitch) for n in _notes(part))
        ref = sorted((float(n.offset), float(n.quarterLength), p.midi) for n in part.stripTies().flatten().notes
                     if n.quarterLength > 0 for p in n.pitches)  # fmt: skip
        assert ours == ref


def test_unparsable_score_is_a_clear_error(monkeypatch, tmp_path):
    import mert.data.scores as scores

    (tmp_path / "ryansMammoth").mkdir()
    (tmp_path / "ryansMammoth" / "Broken.abc").write_text("X:1\nT:broken\nK:G\n|: \x00\x01 garbage ((((\n")
    monkeypatch.setattr(scores, "corpus_root", lambda: tmp_path)
    pieces, skipped = scores.load_pieces(["ryansMammoth/Broken.abc"])
    assert pieces == [] and skipped[0][0] == "ryansMammoth/Broken.abc" and "ryansMammoth/Broken.abc" in skipped[0][1]


def test_bach_in_metadata_is_refused():
    assert BACH.search("J. S. Bach") and BACH.search("Bach's Air") and not BACH.search("The Old Bachelor's Reel")
