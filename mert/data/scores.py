"""Real compositions from the ``music21`` corpus, as note events with keys, beats and sources.

The demo corpus and the probing tasks are rendered from real scores (string quartets, madrigals, masses, fiddle
tunes, ...) shipped inside the ``music21`` package, so everything stays pip-only and offline.

**Reserved material.** J. S. Bach's pieces (the ``bach`` composer of music21: chorales and everything else) are
reserved for the project's independent evaluation: they are never rendered, trained on or tuned on. Collections are
taken from an allowlist (:data:`COLLECTIONS`); :func:`check_allowed` refuses any path under a reserved collection
(``bach``; also ``cpebach`` and ``demos``, which holds a Bach chorale) or whose metadata names Bach, and every
loader goes through it.

**Licences.** Each allowed collection records its licence (:data:`COLLECTIONS`); the demo writes them next to the
audio (``SOURCES.csv``). The compositions are in the public domain; the encodings are distributed with music21 under
its corpus licence (``music21/corpus/license.txt``). The Essen folksong collection is left out because its encodings
are licensed for non-commercial use only.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

M21_LICENCE = "public-domain composition; encoding distributed with music21 (BSD-3) under music21/corpus/license.txt"
COLLECTIONS: dict[str, dict[str, str]] = {
    # name -> what it is and its licence. Kinds: "tunes" (monophonic folk/fiddle tunes), "ensemble" (polyphony).
    "ryansMammoth": {"kind": "tunes", "what": "Ryan's Mammoth Collection (1883), fiddle tunes, abc",
                     "licence": "public domain (1883); abc transcriptions contributed to the public, " + M21_LICENCE},
    "oneills1850": {"kind": "tunes", "what": "O'Neill's Music of Ireland (1903), abc",
                    "licence": "public domain (1903); abc by John Chambers, freely distributed; " + M21_LICENCE},
    "airdsAirs": {"kind": "tunes", "what": "Aird's Selection of Scotch, English, Irish and Foreign Airs (1782), abc",
                  "licence": "public domain (1782); " + M21_LICENCE},
    "palestrina": {"kind": "ensemble", "what": "G. P. da Palestrina, mass movements (Humdrum)",
                   "licence": M21_LICENCE},
    "monteverdi": {"kind": "ensemble", "what": "C. Monteverdi, madrigals books 3-5 (MusicXML)",
                   "licence": M21_LICENCE},
    "trecento": {"kind": "ensemble", "what": "Italian trecento songs (MusicXML)", "licence": M21_LICENCE},
    "josquin": {"kind": "ensemble", "what": "Josquin des Prez (MusicXML)", "licence": M21_LICENCE},
    "mozart": {"kind": "ensemble", "what": "W. A. Mozart, string quartets and piano sonata K. 545",
               "licence": M21_LICENCE},
    "haydn": {"kind": "ensemble", "what": "J. Haydn, string quartets", "licence": M21_LICENCE},
    "beethoven": {"kind": "ensemble", "what": "L. van Beethoven, string quartets", "licence": M21_LICENCE},
    "schumann_robert": {"kind": "ensemble", "what": "R. Schumann, piano pieces and songs", "licence": M21_LICENCE},
    "schubert": {"kind": "ensemble", "what": "F. Schubert", "licence": M21_LICENCE},
    "joplin": {"kind": "ensemble", "what": "S. Joplin, rag", "licence": M21_LICENCE},
    "corelli": {"kind": "ensemble", "what": "A. Corelli, trio sonata", "licence": M21_LICENCE},
    "handel": {"kind": "ensemble", "what": "G. F. Handel", "licence": M21_LICENCE},
}  # fmt: skip
RESERVED = ("bach", "cpebach", "demos")
"""Collections never used: ``bach`` (reserved for independent evaluation), ``cpebach`` (out of caution, same name)
and ``demos`` (holds a Bach chorale)."""

BACH = re.compile(r"\bbach\b", re.IGNORECASE)
"""Metadata naming Bach (as a word: "Bach", "J. S. Bach", "Bach's"; not "Bachelor") marks a reserved piece."""
MIN_NOTES = 8


class ScoreError(ValueError):
    """A score that cannot be used (reserved, unparsable, empty); the message names the corpus path."""


@dataclass(frozen=True)
class Note:
    """One note: onset and duration in quarter notes from the piece's start, MIDI pitch, velocity 1-127."""

    onset: float
    duration: float
    pitch: int
    velocity: int = 80


@dataclass
class Piece:
    """A parsed composition, reduced to what rendering and labelling need.

    Attributes:
        source: music21 corpus path relative to the corpus root (e.g. ``ryansMammoth/AcaciaReel.abc``), with
            ``#N`` appended for the N-th tune of a multi-tune (opus) file.
        collection: the corpus collection (a key of :data:`COLLECTIONS`).
        title: title from the score's metadata (may be empty).
        parts: notes per part (voice/instrument), sorted by onset.
        beats: beat positions in quarter notes (from the measures and time signatures, pickups included).
        downbeats: positions of the first beat of each full measure, in quarter notes.
        key: ``"<tonic> <major|minor>"`` in mir_eval spelling when known (see :func:`piece_key`), else None.
        length: piece length in quarter notes.
    """

    source: str
    collection: str
    title: str
    parts: list[list[Note]]
    beats: list[float]
    downbeats: list[float]
    key: str | None
    length: float
    meta: dict = field(default_factory=dict)

    @property
    def n_notes(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def regular_beats(self) -> bool:
        """Whether every beat is one beat unit after the previous (no meter changes or mis-encoded bars)."""
        d = np.diff(self.beats)
        return len(d) > 0 and bool(np.all(np.abs(d - np.median(d)) < 1e-3))


def corpus_root() -> Path:
    """The directory of the music21 corpus inside the installed package."""
    import music21

    return Path(music21.__file__).parent / "corpus"


def check_allowed(source: str) -> str:
    """Return the collection of corpus path ``source`` or raise :class:`ScoreError` if it is reserved/unknown."""
    collection = Path(source.split("#")[0]).parts[0]
    if collection.lower() in RESERVED or "bach" in collection.lower():
        raise ScoreError(f"{source}: collection {collection!r} is reserved for independent evaluation; never used")
    if collection not in COLLECTIONS:
        raise ScoreError(f"{source}: collection {collection!r} is not on the allowlist {sorted(COLLECTIONS)}")
    return collection


@dataclass(frozen=True)
class Source:
    """One composition in the corpus, known before parsing.

    Attributes:
        path: corpus path relative to the corpus root, with ``#N`` for tune ``X:N`` of a multi-tune abc file.
        collection: the collection (a key of :data:`COLLECTIONS`).
        key: for abc tunes, the notated key (mir_eval spelling) when the ``K:`` field states major or minor.
        mode: for abc tunes, the notated mode (``major``, ``minor``, ``dorian``, ...); else None.
    """

    path: str
    collection: str
    key: str | None = None
    mode: str | None = None


_MODES = {"": "major", "maj": "major", "major": "major", "ion": "major", "ionian": "major", "m": "minor",
          "min": "minor", "minor": "minor", "aeo": "minor", "aeolian": "minor", "dor": "dorian",
          "dorian": "dorian", "mix": "mixolydian", "mixolydian": "mixolydian", "phr": "phrygian", "lyd": "lydian",
          "loc": "locrian"}  # fmt: skip


def abc_key_field(field: str) -> tuple[str | None, str | None]:
    """``(key, mode)`` of an abc ``K:`` field.

    ``"Am"`` -> ``("A minor", "minor")``, ``"Ador"`` -> ``(None, "dorian")``, unreadable -> ``(None, None)``.
    """
    m = re.match(r"\s*([A-G])([#b]?)\s*([A-Za-z]*)", field)
    if not m:
        return None, None
    mode = _MODES.get(m.group(3).lower()[:3] if m.group(3).lower() not in _MODES else m.group(3).lower())
    if mode is None:
        return None, None
    tonic = m.group(1) + m.group(2).replace("b", "-")
    return (_mir_eval_key(tonic, mode) if mode in ("major", "minor") else None), mode


def scan_abc(rel: str, collection: str) -> list[Source]:
    """The tunes of an abc file from its headers alone (no parsing): one :class:`Source` per ``X:`` tune."""
    text = (corpus_root() / rel).read_text(encoding="utf-8", errors="replace")
    tunes, number, key_field = [], None, None
    for line in text.splitlines() + ["X: end"]:
        if line.startswith("X:"):
            if number is not None:
                tunes.append((number, key_field))
            n = line[2:].strip()
            number, key_field = (int(n) if n.isdigit() else None), None
        elif line.startswith("K:") and key_field is None:
            key_field = line[2:]
    out = []
    for n, k in tunes:
        key, mode = abc_key_field(k) if k is not None else (None, None)
        path = rel if len(tunes) == 1 else f"{rel}#{n}"
        if len(tunes) == 1 or n is not None:
            out.append(Source(path, collection, key, mode))
    return out


def list_sources(collections: list[str] | None = None) -> list[Source]:
    """Every composition of the allowed ``collections`` (default: all of :data:`COLLECTIONS`), sorted by path.

    abc files are split into their tunes by header scanning, so a tune can be parsed (and its notated key read)
    without parsing the whole collection.
    """
    root = corpus_root()
    out: list[Source] = []
    for name in collections or list(COLLECTIONS):
        check_allowed(name)
        for p in sorted((root / name).rglob("*")):
            rel = str(p.relative_to(root))
            if p.suffix == ".abc":
                out.extend(scan_abc(rel, name))
            elif p.suffix in (".krn", ".mxl", ".xml", ".musicxml") and not p.stem.endswith("_old"):
                out.append(Source(rel, name))
    return out


def parse_source(source: str) -> list[Piece]:
    """Parse one corpus file (or tune ``file.abc#N``) into pieces (one per tune of a multi-tune file).

    Raises:
        ScoreError: reserved collection, unparsable file, or no usable piece in it.
    """
    collection = check_allowed(source)
    from music21 import converter, stream

    rel, _, number = source.partition("#")
    try:
        with warnings.catch_warnings(record=True) as notes:  # music21's encoding notes (overfull measures, ...)
            warnings.simplefilter("always")
            parsed = converter.parse(corpus_root() / rel, **({"number": int(number)} if number else {}))
        for note in notes:  # kept in the debug log, off the console
            log.debug("%s: %s", source, note.message)
    except Exception as e:  # music21 raises many types on bad input; keep the reason
        raise ScoreError(f"{source}: unparsable score ({type(e).__name__}: {e})") from e
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    pieces, reasons = [], []
    for i, score in enumerate(scores):
        name = f"{source}#{i}" if len(scores) > 1 else source
        try:
            pieces.append(_piece(score, name, collection))
        except ScoreError as e:
            reasons.append(str(e))
    if not pieces:
        raise ScoreError(f"{source}: no usable piece ({'; '.join(reasons[:3]) or 'empty'})")
    return pieces


def _piece(score, name: str, collection: str) -> Piece:
    md = score.metadata
    title = (md.title or "") if md is not None else ""
    composer = (md.composer or "") if md is not None else ""
    if BACH.search(f"{title} {composer}"):
        raise ScoreError(f"{name}: metadata names Bach ({composer or title!r}): reserved, never used")
    parts = [p for p in score.parts] or [score]
    notes = [_notes(p) for p in parts]
    notes = [n for n in notes if n]
    if sum(len(n) for n in notes) < MIN_NOTES:
        raise ScoreError(f"{name}: fewer than {MIN_NOTES} notes")
    length = max(n.onset + n.duration for part in notes for n in part)
    beats, downbeats = _beats(parts[0], length)
    if len(beats) < 4:
        raise ScoreError(f"{name}: no measures/time signature to place beats")
    return Piece(name, collection, title, notes, beats, downbeats, piece_key(score), float(length),
                 {"composer": composer})  # fmt: skip


def _notes(part) -> list[Note]:
    """Notes of one part (tied notes merged, chords expanded, grace notes dropped), sorted by onset.

    Ties are merged here rather than with music21's ``stripTies``, which deep-copies the part (most of the parse
    time of a score).
    """
    out: list[Note] = []
    open_ties: dict[int, int] = {}  # MIDI pitch -> index in ``out`` of the note its tie continues
    for el in part.flatten().notes:
        dur = float(el.quarterLength)
        if dur <= 0:
            continue
        onset = float(el.offset)
        vel = el.volume.velocity if el.volume is not None and el.volume.velocity else 80
        for p in el.pitches:
            if not 0 <= p.midi < 128:
                continue
            tie = el.tie.type if getattr(el, "tie", None) is not None else None
            prev = open_ties.pop(p.midi, None) if tie in ("continue", "stop") else None
            if prev is not None and abs(out[prev].onset + out[prev].duration - onset) < 1e-6:
                old = out[prev]
                out[prev] = Note(old.onset, old.duration + dur, old.pitch, old.velocity)
                idx = prev
            else:
                out.append(Note(onset, dur, int(p.midi), int(vel)))
                idx = len(out) - 1
            if tie in ("start", "continue"):
                open_ties[p.midi] = idx
    out.sort(key=lambda n: (n.onset, n.pitch))
    return out


def _beats(part, length: float) -> tuple[list[float], list[float]]:
    """Beat and downbeat positions (quarter notes) from the measures' time signatures.

    A complete measure starts on a downbeat. An incomplete first measure is a pickup (its beats count back from
    the next downbeat); an incomplete measure elsewhere is half of a bar split by a repeat sign or a section
    boundary (the end of the A part and the pickup of the B part), so its beats continue the running grid.
    """
    beats: list[float] = []
    downbeats: list[float] = []
    ts = None
    for i, m in enumerate(part.getElementsByClass("Measure")):
        ts = m.timeSignature or ts
        if ts is None:
            continue
        bd, bar = float(ts.beatDuration.quarterLength), float(ts.barDuration.quarterLength)
        start, dur = float(m.offset), float(m.duration.quarterLength)
        end = start + dur
        if abs(dur - bar) < 1e-6:
            downbeats.append(start)
            grid = [start + k * bd for k in range(int(ts.beatCount))]
        elif i == 0 or not beats:
            grid = [start + dur - bar + k * bd for k in range(int(ts.beatCount))]
        else:
            grid = list(np.arange(beats[-1] + bd, end - 1e-6, bd))
        beats += [round(float(b), 6) for b in grid if start - 1e-6 <= b < end - 1e-6 and b <= length]
    return beats, downbeats


def piece_key(score) -> str | None:
    """The piece's key as ``"<tonic> <major|minor>"`` (mir_eval spelling), or None when it is not trustworthy.

    The notated key is used when the score states a mode (abc ``K:`` fields: ``G`` -> G major, ``Am`` -> A minor;
    modal keys such as ``Ador`` give None). When only a key signature is notated (MusicXML/Humdrum), the
    Krumhansl-Schmuckler analysis of music21 (``score.analyze('key')``) picks between the signature's major key and
    its relative minor (the first of the analysis' three best keys that has the notated signature); a piece
    whose three best analysed keys all disagree with its signature gives None.
    """
    from music21 import key as m21key

    sigs = list(score.flatten().getElementsByClass("KeySignature"))
    if not sigs:
        return None
    first = sigs[0]
    if isinstance(first, m21key.Key):
        return _mir_eval_key(first.tonic.name, first.mode) if first.mode in ("major", "minor") else None
    try:
        analysed = score.analyze("key")
    except Exception:  # analysis needs pitches; nothing to trust otherwise
        return None
    for k in [analysed, *analysed.alternateInterpretations[:2]]:  # the signature's key among the top 3
        if k.sharps == first.sharps and k.mode in ("major", "minor"):
            return _mir_eval_key(k.tonic.name, k.mode)
    return None


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
"""Pitch-class names as mir_eval's key labels spell them."""


def _mir_eval_key(tonic: str, mode: str) -> str:
    from music21 import pitch

    return f"{PITCH_CLASSES[pitch.Pitch(tonic).pitchClass]} {mode}"


def transpose_key(key: str, semitones: int) -> str:
    """``transpose_key("G major", 2) == "A major"`` (mir_eval spelling)."""
    tonic, mode = key.split()
    return f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic) + semitones) % 12]} {mode}"


def load_pieces(sources: list[str], workers: int = 1) -> tuple[list[Piece], list[tuple[str, str]]]:
    """Parse ``sources``; bad scores are skipped with their reason.

    Returns:
        ``(pieces, skipped)``: pieces in source order; ``skipped`` holds ``(source, reason)`` pairs.
    """
    if workers > 1 and len(sources) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_try_parse, sources, chunksize=4))
    else:
        results = [_try_parse(s) for s in sources]
    pieces, skipped = [], []
    for src, (got, reason) in zip(sources, results):
        if reason:
            log.warning("skipped score %s", reason)
            skipped.append((src, reason))
        pieces.extend(got)
    return pieces, skipped


def _try_parse(source: str) -> tuple[list[Piece], str | None]:
    try:
        return parse_source(source), None
    except ScoreError as e:
        return [], str(e)
