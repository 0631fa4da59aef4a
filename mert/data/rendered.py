"""The default demo corpus: real compositions from the music21 corpus, rendered to audio, and probing tasks.

Everything is seeded and byte-deterministic (each clip has its own seed, so worker count and order do not matter).
J. S. Bach is never used (:mod:`mert.data.scores`). Outputs under ``OUT``::

    raw/                  pretraining corpus: ``n_clips`` excerpts of string quartets, madrigals, masses, trecento
                          songs, fiddle tunes, ..., each with its own instrumentation (General MIDI programs), tempo,
                          loudness (about -14 LUFS +- 4) and room; wav/flac/ogg/mp3, 16-48 kHz, mono/stereo
    raw_labels.csv        what each raw clip is (source piece, collection, programs, bpm, key, loudness, room)
    SOURCES.csv           each collection used, what it is, its licence, and how many pieces came from it
    skipped.csv           scores that could not be parsed and renders that came out silent, with the reason
    tasks/key/            24 major/minor keys (mir_eval names), real tunes and tonal ensemble openings transposed
                          to every key; CSV manifest ``path,split,label``; scored with mir_eval's weighted score
    tasks/instrument/     9 General MIDI families, one instrument playing a real melodic line; ``path,split,label``
    tasks/pitch/          12 pitch classes of single notes across instruments and octaves; ``path,split,label``
    tasks/tempo/          excerpts at stratified random tempi (60-180 BPM) with the score's beat times;
                          ``path,split,bpm,beats`` (beat F1 at 70 ms)
    tasks/<task>/sources.csv   per clip: source piece, transposition, program(s), bpm, start (quarter notes)

Splits are stratified by class (key, family, pitch class; tempo bins) and, for the tasks built from pieces, never
share a piece between train, valid and test. The pieces of the tasks are disjoint from the pretraining pieces.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mert.data.audiofile import write_audio
from mert.data.demo import DemoParams
from mert.data.render import (
    ENSEMBLES,
    FAMILY_RANGE,
    GM_FAMILIES,
    RenderError,
    Voice,
    fit_range,
    normalise_loudness,
    render,
    room,
    transpose,
)
from mert.data.scores import COLLECTIONS, PITCH_CLASSES, Note, Piece, Source, list_sources, load_pieces, transpose_key
from mert.utils.io import atomic_write_csv
from mert.utils.runtime import usable_cores

log = logging.getLogger(__name__)

KEYS = tuple(f"{pc} {mode}" for mode in ("major", "minor") for pc in PITCH_CLASSES)
TASK_SECONDS = {"key": 6.0, "instrument": 4.0, "pitch": 2.0, "tempo": 8.0}
"""Clip length per rendered task, in seconds."""
TUNES = ("ryansMammoth", "oneills1850", "airdsAirs")
TONAL = ("mozart", "haydn", "beethoven", "schubert", "schumann_robert", "joplin", "corelli", "handel")
EARLY = ("palestrina", "monteverdi", "trecento")  # josquin's abc files have no time signatures (no beats)
MAX_SCORE_BYTES = 400_000
"""Larger score files (uncompressed size estimate) are not used: parsing them takes many seconds each."""
TASK_SR = 24000
RAW_FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III"), ("wav", "FLOAT")]
RAW_RATES = [16000, 22050, 24000, 32000, 44100, 48000]
MELODIC_FAMILIES = ("piano", "organ", "guitar", "strings", "brass", "reed", "pipe", "chromatic_percussion")


@dataclass
class Job:
    """One clip to render: voices, tempo, excerpt, room and loudness, and where to write it."""

    path: Path
    voices: list[Voice]
    qpm: float
    seconds: float
    start_q: float
    sr: int
    seed: int
    channels: int = 1
    subtype: str | None = "PCM_16"
    info: dict = field(default_factory=dict)


MAX_WORKERS = 8
"""Rendering processes with ``workers: 0`` (each holds parsed scores and a SoundFont synthesiser in memory)."""


# ------------------------------------------------------------------------------------------ entry point
def generate(out: str | Path, p: DemoParams) -> Path:
    """Write the rendered demo corpus (see the module docstring) to ``out``."""
    out = Path(out)
    workers = p.workers or min(MAX_WORKERS, usable_cores())
    plan = _plan_sources(p)
    chosen = plan["pretrain"] + [s for split in plan["tasks"].values() for s in split]
    parsed, skipped = load_pieces([s.path for s in chosen], workers)
    pieces = {pc.source: pc for pc in parsed}
    pretrain = [pieces[s.path] for s in plan["pretrain"] if s.path in pieces][: p.n_clips]  # spares fill in
    task_pools = {split: [pieces[s.path] for s in srcs if s.path in pieces] for split, srcs in plan["tasks"].items()}
    header_keys = {s.path: s.key for s in chosen if s.key}
    for pools in task_pools.values():  # abc tunes: the notated key (with mode) wins over the analysis
        for pc in pools:
            pc.key = header_keys.get(pc.source, pc.key)
    jobs = _raw_jobs(out, pretrain, p)
    tasks = {
        "key": _key_jobs(out, task_pools, p),
        "instrument": _instrument_jobs(out, task_pools, p),
        "pitch": _pitch_jobs(out, p),
        "tempo": _tempo_jobs(out, task_pools, p),
    }
    all_jobs = jobs + [j for t in tasks.values() for j in t]
    results = _run(all_jobs, workers)
    bad = [(str(j.path.relative_to(out)), r) for j, r in zip(all_jobs, results) if isinstance(r, str)]
    skipped += bad
    done = {j.path for j, r in zip(all_jobs, results) if not isinstance(r, str)}
    _write_raw_labels(out, [(j, r) for j, r in zip(jobs, results) if j.path in done])
    for name, tj in tasks.items():
        _write_task(out / "tasks" / name, name, [j for j in tj if j.path in done])
    if p.bad_files:
        from mert.data.synth import write_bad_files

        write_bad_files(out / "raw", np.random.default_rng(p.seed))
    _write_sources(out, pretrain + [pc for pools in task_pools.values() for pc in pools])
    atomic_write_csv(out / "skipped.csv", [{"what": w, "reason": r} for w, r in skipped], ["what", "reason"])
    return out


# ------------------------------------------------------------------------------------------ which pieces
def _plan_sources(p: DemoParams) -> dict:
    """Pretraining pieces and task pieces per split (disjoint), chosen with the seed from the allowlist."""
    from mert.data.scores import corpus_root

    rng = np.random.default_rng([p.seed, 0])
    root = corpus_root()
    sources = [s for s in list_sources() if _parse_cost(root / s.path.split("#")[0]) <= MAX_SCORE_BYTES]
    by = {name: [s for s in sources if s.collection in names] for name, names in
          (("tunes", TUNES), ("tonal", TONAL), ("early", EARLY))}  # fmt: skip
    for name in by:
        rng.shuffle(by[name])
        by[name] = _interleave(by[name])
    n_ens = (p.n_clips + 1) // 2
    pretrain = _take(by["early"], n_ens - n_ens // 4) + _take(by["tonal"], n_ens // 4)
    pretrain += _take(by["tunes"], p.n_clips - len(pretrain))
    pretrain += _take(by["tunes"], max(2, p.n_clips // 8))  # spares, used in order when a score cannot be parsed
    # task pieces: tunes of each mode (notated key) and tonal ensemble pieces, spread over the splits
    n_pieces = max(24, int(round(p.task_clips * 0.35)))
    major = _take([s for s in by["tunes"] if s.mode == "major"], n_pieces // 2)
    minor = _take([s for s in by["tunes"] if s.mode == "minor"], n_pieces // 3)
    tonal = _take(by["tonal"], max(3, n_pieces // 8))
    splits: dict[str, list[Source]] = {"train": [], "valid": [], "test": []}
    for group in (major, minor, tonal):
        for split, part in _split_list(group, p).items():
            splits[split] += part
    return {"pretrain": pretrain, "tasks": splits}


def _interleave(sources: list[Source]) -> list[Source]:
    """Round-robin over collections (keeping each one's order), so no single collection dominates a take."""
    groups: dict[str, list[Source]] = {}
    for s in sources:
        groups.setdefault(s.collection, []).append(s)
    out, lists = [], list(groups.values())
    for i in range(max((len(g) for g in lists), default=0)):
        out += [g[i] for g in lists if i < len(g)]
    return out


def _parse_cost(path: Path) -> int:
    size = path.stat().st_size
    return size * 8 if path.suffix == ".mxl" else size  # .mxl is zip-compressed (~8x)


def _take(pool: list[Source], n: int) -> list[Source]:
    """Remove and return the first ``n`` sources of ``pool`` (so later takes are disjoint)."""
    got = pool[:n]
    del pool[:n]
    return got


def _split_list(items: list, p: DemoParams) -> dict[str, list]:
    n = len(items)
    n_test = max(1, round(n * p.test_fraction))
    n_valid = max(1, round(n * p.valid_fraction))
    return {"test": items[:n_test], "valid": items[n_test : n_test + n_valid], "train": items[n_test + n_valid :]}


def _split_counts(p: DemoParams) -> dict[str, int]:
    n_test = round(p.task_clips * p.test_fraction)
    n_valid = round(p.task_clips * p.valid_fraction)
    return {"train": p.task_clips - n_test - n_valid, "valid": n_valid, "test": n_test}


# ------------------------------------------------------------------------------------------ jobs
def _seed(p: DemoParams, task: str, i: int) -> int:
    return int(np.random.default_rng([p.seed, sum(map(ord, task)), i]).integers(2**31))


def _beat_q(piece: Piece) -> float:
    """Quarter notes per beat (the score's beat unit: 1 in 2/4, 1.5 in 6/8, 2 in alla breve)."""
    d = np.diff(piece.beats)
    return float(np.median(d)) if len(d) else 1.0


def _period(piece: Piece) -> float:
    """Quarter notes from the first beat to the beat after the last: repeating the piece with this period keeps
    the beat grid (a pickup fills the incomplete last bar).
    """
    return piece.beats[-1] + _beat_q(piece) - piece.beats[0]


def _looped(piece: Piece, until_q: float) -> Piece:
    """The piece repeated end to end (with :func:`_period`) until ``until_q`` quarter notes (tunes are played with
    repeats), beats included.
    """
    period = _period(piece)
    reps = max(1, math.ceil(until_q / period))
    parts = [[Note(n.onset + r * period, n.duration, n.pitch, n.velocity) for r in range(reps) for n in part]
             for part in piece.parts]  # fmt: skip
    beats = [b + r * period for r in range(reps) for b in piece.beats]
    return Piece(piece.source, piece.collection, piece.title, parts, beats, [], piece.key, reps * period)


def _excerpt(parts: list[list[Note]], start_q: float, len_q: float) -> list[list[Note]]:
    return [[n for n in part if start_q <= n.onset < start_q + len_q] for part in parts]


def _orchestrate(parts: list[list[Note]], rng: np.random.Generator, tune: bool) -> list[Voice]:
    """Instrumentation: a tune gets one melodic instrument (sometimes doubled an octave below by another);
    an ensemble piece gets one of :data:`ENSEMBLES`, top part first.
    """
    if tune:
        fams = rng.choice(MELODIC_FAMILIES, size=2, replace=False)
        lo, hi = FAMILY_RANGE[fams[0]]
        melody = fit_range(parts[0], lo, hi)
        voices = [Voice(melody, int(rng.choice(GM_FAMILIES[fams[0]])), 110, int(rng.integers(40, 88)))]
        if rng.random() < 0.3:
            low = transpose(voices[0].notes, -12)
            voices.append(Voice(low, int(rng.choice(GM_FAMILIES[fams[1]])), 80, int(rng.integers(30, 98))))
        return voices
    progs = ENSEMBLES[str(rng.choice(list(ENSEMBLES)))]
    order = sorted(range(len(parts)), key=lambda i: -np.mean([n.pitch for n in parts[i]] or [0]))
    voices = []
    for rank, i in enumerate(order[:15]):
        pan = int(np.clip(64 + (rank - (len(order) - 1) / 2) * 20 + rng.normal(0, 6), 0, 127))
        voices.append(Voice(parts[i], progs[min(rank, len(progs) - 1)], int(rng.integers(85, 115)), pan))
    return voices


def _place(piece: Piece, seconds: float, qpm: float, rng, first_q: float | None = None) -> float:
    """A random beat to start an excerpt of ``seconds`` at ``qpm`` (within ``first_q`` quarters if given)."""
    len_q = seconds * qpm / 60
    last = max(0.0, piece.length - len_q)
    if first_q is not None:
        last = min(last, first_q)
    starts = [b for b in piece.beats if b <= last] or [0.0]
    return float(rng.choice(starts))


def _raw_jobs(out: Path, pieces: list[Piece], p: DemoParams) -> list[Job]:
    jobs = []
    for i, piece in enumerate(pieces):
        rng = np.random.default_rng(_seed(p, "raw", i))
        seconds = float(rng.uniform(p.min_seconds, p.max_seconds))
        bpm = float(rng.uniform(60, 140))
        qpm = bpm * _beat_q(piece)
        len_q = seconds * qpm / 60
        tune = COLLECTIONS[piece.collection]["kind"] == "tunes"
        looped = _looped(piece, len_q) if piece.length < len_q else piece
        start = _place(looped, seconds, qpm, rng)
        voices = _orchestrate(_excerpt(looped.parts, start, len_q), rng, tune)
        ext, subtype = RAW_FORMATS[i % len(RAW_FORMATS)]
        name = f"raw/{i:04d}-{piece.collection}.{ext}"
        info = {"source": piece.source, "collection": piece.collection, "title": piece.title, "key": piece.key or "",
                "bpm": round(bpm, 2), "programs": ";".join(str(v.program) for v in voices)}  # fmt: skip
        jobs.append(Job(out / name, voices, qpm, seconds, start, RAW_RATES[i % len(RAW_RATES)], _seed(p, "raw-room", i),
                        channels=2 if i % 2 == 0 else 1, subtype=subtype, info=info))  # fmt: skip
    return jobs


def _cycle(pool: list[Piece], counter: Counter, tag: str) -> Piece:
    piece = pool[counter[tag] % len(pool)]
    counter[tag] += 1
    return piece


def _task_job(out: Path, task: str, i: int, split: str, voices: list[Voice], qpm: float, start: float, p: DemoParams,
              info: dict) -> Job:  # fmt: skip
    return Job(out / "tasks" / task / "audio" / f"{i:04d}.flac", voices, qpm, TASK_SECONDS[task], start, TASK_SR,
               _seed(p, f"{task}-room", i), info={"split": split, **info})  # fmt: skip


def _key_jobs(out: Path, pools: dict[str, list[Piece]], p: DemoParams) -> list[Job]:
    """Each split cycles through the 24 keys; a piece of the key's mode is transposed to it."""
    jobs, i = [], 0
    for split, n in _split_counts(p).items():
        by_mode = {m: [pc for pc in pools[split] if pc.key and pc.key.endswith(m)] for m in ("major", "minor")}
        used: Counter = Counter()
        for j in range(n):
            target = KEYS[j % 24]
            mode = target.split()[1]
            pool = by_mode[mode] or by_mode["major" if mode == "minor" else "minor"]
            if not pool:
                continue
            piece = _cycle(pool, used, mode)
            rng = np.random.default_rng(_seed(p, "key", i))
            tonic, target_tonic = piece.key.split()[0], target.split()[0]
            semis = (PITCH_CLASSES.index(target_tonic) - PITCH_CLASSES.index(tonic)) % 12
            semis = semis - 12 if semis > 5 else semis
            label = transpose_key(piece.key, semis)
            qpm = float(rng.uniform(70, 150))
            tune = COLLECTIONS[piece.collection]["kind"] == "tunes"
            # ensemble movements modulate: take the opening, where the home key is established
            start = _place(piece, TASK_SECONDS["key"], qpm, rng, first_q=None if tune else 8.0)
            parts = [transpose(part, semis) for part in _excerpt(piece.parts, start, TASK_SECONDS["key"] * qpm / 60)]
            voices = _orchestrate(parts, rng, tune)
            info = {"label": label, "source": piece.source, "transpose": semis, "qpm": round(qpm, 2), "start_q": start,
                    "programs": ";".join(str(v.program) for v in voices)}  # fmt: skip
            jobs.append(_task_job(out, "key", i, split, voices, qpm, start, p, info))
            i += 1
    return jobs


def _melody(piece: Piece, rng: np.random.Generator) -> list[Note]:
    """A melodic line: the tune, or one part of an ensemble piece (the top part half of the time)."""
    if len(piece.parts) == 1 or rng.random() < 0.5:
        return max(piece.parts, key=lambda part: np.mean([n.pitch for n in part]))
    return piece.parts[int(rng.integers(len(piece.parts)))]


def _instrument_jobs(out: Path, pools: dict[str, list[Piece]], p: DemoParams) -> list[Job]:
    """Each split cycles through the families; one program of the family plays a real melodic line."""
    families = list(GM_FAMILIES)
    jobs, i = [], 0
    for split, n in _split_counts(p).items():
        used: Counter = Counter()
        for j in range(n):
            family = families[j % len(families)]
            rng = np.random.default_rng(_seed(p, "instrument", i))
            for _ in range(8):  # an excerpt with at least 3 notes
                piece = _cycle(pools[split], used, "all")
                qpm = float(rng.uniform(70, 150))
                start = _place(piece, TASK_SECONDS["instrument"], qpm, rng)
                line = _excerpt([_melody(piece, rng)], start, TASK_SECONDS["instrument"] * qpm / 60)[0]
                if len(line) >= 3:
                    break
            program = int(rng.choice(GM_FAMILIES[family]))
            voices = [Voice(fit_range(line, *FAMILY_RANGE[family]), program, 110)]
            info = {"label": family, "source": piece.source, "qpm": round(qpm, 2), "start_q": start}
            info["programs"] = program
            jobs.append(_task_job(out, "instrument", i, split, voices, qpm, start, p, info))
            i += 1
    return jobs


def _pitch_jobs(out: Path, p: DemoParams) -> list[Job]:
    """Single notes: each split cycles through the 12 pitch classes; instrument, octave, velocity and length vary."""
    families = list(GM_FAMILIES)
    jobs, i = [], 0
    for split, n in _split_counts(p).items():
        for j in range(n):
            rng = np.random.default_rng(_seed(p, "pitch", i))
            pc = j % 12
            family = str(rng.choice(families))
            lo, hi = FAMILY_RANGE[family]
            midi = int(rng.choice([m for m in range(lo, hi + 1) if m % 12 == pc]))
            program = int(rng.choice(GM_FAMILIES[family]))
            note = Note(0.0, float(rng.uniform(0.6, 1.6)), midi, int(rng.integers(60, 121)))
            info = {"label": PITCH_CLASSES[pc], "source": "", "midi": midi, "programs": program}
            jobs.append(_task_job(out, "pitch", i, split, [Voice([note], program, 110)], 60.0, 0.0, p, info))
            i += 1
    return jobs


def _tempo_jobs(out: Path, pools: dict[str, list[Piece]], p: DemoParams) -> list[Job]:
    """Excerpts at tempi stratified over 12 bins of 10 BPM in 60-180; beat times from the score's measures.

    Only pieces with a regular beat grid are used (real encodings have meter changes and mis-encoded bars).
    """
    seconds = TASK_SECONDS["tempo"]
    jobs, i = [], 0
    for split, n in _split_counts(p).items():
        pool = [pc for pc in pools[split] if pc.regular_beats]
        used: Counter = Counter()
        for j in range(n):
            rng = np.random.default_rng(_seed(p, "tempo", i))
            bpm = 60.0 + 10.0 * (j % 12) + float(rng.uniform(0, 10))
            piece = _cycle(pool, used, "all")
            qpm = bpm * _beat_q(piece)
            len_q = seconds * qpm / 60
            tune = COLLECTIONS[piece.collection]["kind"] == "tunes"
            looped = _looped(piece, len_q + piece.length) if piece.length < 2 * len_q else piece
            start = _place(looped, seconds, qpm, rng)
            times = [round((b - start) * 60 / qpm, 4) for b in looped.beats if start - 1e-6 <= b < start + len_q]
            voices = _orchestrate(_excerpt(looped.parts, start, len_q), rng, tune)
            info = {"bpm": round(bpm, 2), "beats": ";".join(f"{t:.4f}" for t in times), "source": piece.source,
                    "qpm": round(qpm, 2), "start_q": start}  # fmt: skip
            info["programs"] = ";".join(str(v.program) for v in voices)
            jobs.append(_task_job(out, "tempo", i, split, voices, qpm, start, p, info))
            i += 1
    return jobs


# ------------------------------------------------------------------------------------------ rendering
def _run(jobs: list[Job], workers: int) -> list[dict | str]:
    from tqdm import tqdm

    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            return list(tqdm(ex.map(render_job, jobs, chunksize=8), total=len(jobs), desc="render", disable=None))
    return [render_job(j) for j in tqdm(jobs, desc="render", disable=None)]


def render_job(job: Job) -> dict | str:
    """Render, add the room, set the loudness and write one clip; a reason string instead if it came out silent."""
    rng = np.random.default_rng(job.seed)
    try:
        x = render(job.voices, job.qpm, job.seconds, job.sr, job.start_q)
        rt60, wet = float(rng.uniform(0.2, 1.5)), float(rng.uniform(0.0, 0.35))
        x = room(x, job.sr, rt60, wet, rng)
        target = float(rng.uniform(-18, -10))
        x, gain_db = normalise_loudness(x, job.sr, target)
    except RenderError as e:
        return f"{job.path.name}: {e}"
    audio = x.mean(1) if job.channels == 1 else x
    write_audio(job.path, audio, job.sr, job.subtype)
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    return {"lufs": round(target, 2), "rms": round(rms, 4), "rt60": round(rt60, 3), "wet": round(wet, 3)}


# ------------------------------------------------------------------------------------------ manifests
def _write_raw_labels(out: Path, done: list[tuple[Job, dict]]) -> None:
    rows = []
    for j, r in done:
        rows.append({"path": str(j.path.relative_to(out)), **j.info, "seconds": round(j.seconds, 3),
                     "sample_rate": j.sr, "channels": j.channels, **r})  # fmt: skip
    if rows:
        atomic_write_csv(out / "raw_labels.csv", rows, list(rows[0]))


def _write_task(root: Path, task: str, jobs: list[Job]) -> None:
    cols = {"tempo": ["bpm", "beats"]}.get(task, ["label"])
    rows = [{"path": str(j.path.relative_to(root)), "split": j.info["split"], **{c: j.info[c] for c in cols}}
            for j in jobs]  # fmt: skip
    atomic_write_csv(root / "manifest.csv", rows, ["path", "split", *cols])
    extra = [{"path": r["path"], **{k: v for k, v in j.info.items() if k not in ("split", "beats")}}
             for r, j in zip(rows, jobs)]  # fmt: skip
    keys = list(dict.fromkeys(k for e in extra for k in e))
    atomic_write_csv(root / "sources.csv", [{k: e.get(k, "") for k in keys} for e in extra], keys)


def _write_sources(out: Path, pieces: list[Piece]) -> None:
    used = Counter(pc.collection for pc in pieces)
    rows = [{"collection": c, "pieces": used[c], "what": COLLECTIONS[c]["what"], "licence": COLLECTIONS[c]["licence"]}
            for c in sorted(used)]  # fmt: skip
    atomic_write_csv(out / "SOURCES.csv", rows, ["collection", "pieces", "what", "licence"])
