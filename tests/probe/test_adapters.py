"""The 14 MARBLE adapters, each on a tiny fake copy of its dataset's native layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mert.probe.adapters import ADAPTERS
from mert.probe.adapters.gtzan import GENRES
from mert.probe.adapters.keys_emotion import normalise_key
from mert.probe.adapters.musdb import SOURCES
from mert.probe.adapters.nsynth_vocalset import NSYNTH_FAMILIES, SINGERS, TECHNIQUES
from mert.probe.tasks import KEYS, TaskError
from tests.probe.conftest import tone, write_wav

CLIP = tone(440.0, 0.1)


def test_registry_has_the_14_marble_tasks():
    assert len(ADAPTERS) == 14


# ------------------------------------------------------------------------------------------ GTZAN
def make_gtzan(root: Path, lists: bool = True) -> Path:
    splits = {"train": [], "valid": [], "test": []}
    for g in GENRES:
        for i, split in enumerate(["train", "train", "valid", "test", None]):  # 00004: a "faulty" file
            write_wav(root / "genres" / g / f"{g}.{i:05d}.wav", CLIP)
            if split:
                splits[split].append(f"{g}/{g}.{i:05d}.wav")
            times = np.arange(0.05, 0.1, 0.02) + 0.001 * i
            jam = {"annotations": [{"namespace": "tempo", "data": []},
                                   {"namespace": "beat", "data": [{"time": t, "duration": 0, "value": 1,
                                                                   "confidence": 1} for t in times]}]}  # fmt: skip
            (root / "jams").mkdir(parents=True, exist_ok=True)
            (root / "jams" / f"{g}.{i:05d}.wav.jams").write_text(json.dumps(jam))
    if lists:
        for split, names in splits.items():
            (root / f"{split}_filtered.txt").write_text("\n".join(names) + "\n")
    return root


def test_gtzan_genre_uses_the_filtered_lists(tmp_path):
    task = ADAPTERS["gtzan-genre"](make_gtzan(tmp_path))
    assert task.kind == "multiclass" and task.classes == list(GENRES)
    assert task.counts() == {"train": 20, "valid": 10, "test": 10}  # the 10 unlisted files are dropped
    e = next(e for e in task.examples if e.path.name == "jazz.00002.wav")
    assert e.split == "valid" and task.classes[e.target] == "jazz"


def test_gtzan_without_lists_falls_back_to_a_hashed_split(tmp_path, caplog):
    root = make_gtzan(tmp_path, lists=False)
    task = ADAPTERS["gtzan-genre"](root)
    assert len(task.examples) == 50 and "not MARBLE's" in caplog.text
    assert [e.split for e in ADAPTERS["gtzan-genre"](root).examples] == [e.split for e in task.examples]


def test_gtzan_rhythm_reads_jams_beats(tmp_path):
    task = ADAPTERS["gtzan-rhythm"](make_gtzan(tmp_path))
    assert task.kind == "beats" and task.counts()["train"] == 20
    e = next(e for e in task.examples if e.path.name == "rock.00001.wav")
    assert np.allclose(e.target, np.arange(0.05, 0.1, 0.02) + 0.001)


# ------------------------------------------------------------------------------------------ MTT and MTG-Jamendo
def make_mtt(root: Path) -> Path:
    tags = [f"tag{i:03d}" for i in range(60)]
    lines = ["\t".join(['"clip_id"'] + [f'"{t}"' for t in tags] + ['"mp3_path"'])]
    for i, d in enumerate("0bcdf0a1ce"):
        rel = f"{d}/artist-album-{i:02d}-song-0-29.mp3"
        write_wav(root / "mp3" / rel, CLIP)  # a wav payload under an mp3 name is fine: nothing is decoded here
        on = [(i + k) % 60 for k in range(3)] + list(range(0, 45))  # tags 0..44 frequent, others rarer
        lines.append("\t".join([f'"{i}"'] + [f'"{int(j in on)}"' for j in range(60)] + [f'"{rel}"']))
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mtt_top50_and_directory_split(tmp_path):
    task = ADAPTERS["mtt"](make_mtt(tmp_path))
    assert task.kind == "multilabel" and len(task.classes) == 50
    assert task.counts() == {"train": 5, "valid": 2, "test": 3}  # dirs 0,b,0,a,1 / c,c / d,f,e
    first = task.examples[0]
    assert first.path.name == "artist-album-00-song-0-29.mp3" and first.target.shape == (50,)
    assert set(range(45)) <= {int(t[3:]) for t in task.classes}


def make_mtg(root: Path) -> Path:
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    subsets = {
        "instrument": ["instrument---piano", "instrument---guitar"],
        "moodtheme": ["mood/theme---happy"],
        "genre": ["genre---rock", "genre---pop"],
        "top50tags": ["genre---rock", "instrument---piano"],
    }
    for subset, tags in subsets.items():
        for k, split in enumerate(["train", "validation", "test"]):
            rows = [header]
            for j in range(2):
                rel = f"{k}{j}/{100 * k + j}.mp3"
                write_wav(root / "audio" / rel.replace(".mp3", ".low.mp3" if j else ".mp3"), CLIP)
                rows.append(f"track_{100 * k + j}\tartist_1\talbum_1\t{rel}\t30.0\t" + "\t".join(tags[: j + 1]))
            d = root / "data" / "splits" / "split-0"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"autotagging_{subset}-{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("name", ["mtg-instrument", "mtg-moodtheme", "mtg-genre", "mtg-top50"])
def test_mtg_jamendo_subsets(tmp_path, name):
    task = ADAPTERS[name](make_mtg(tmp_path))
    assert task.name == name and task.kind == "multilabel" and task.window == 30.0
    assert task.counts() == {"train": 2, "valid": 2, "test": 2}
    assert all(e.path.exists() for e in task.examples)  # the .low.mp3 variant is found too
    assert task.examples[1].target.sum() == min(2, len(task.classes))


def test_mtg_malformed_tsv(tmp_path):
    root = make_mtg(tmp_path)
    (root / "data/splits/split-0/autotagging_genre-test.tsv").write_text("TRACK_ID\tPATH\n")
    with pytest.raises(TaskError, match="autotagging_genre-test.tsv: expected a TRACK_ID"):
        ADAPTERS["mtg-genre"](root)


# ------------------------------------------------------------------------------------------ GiantSteps and EmoMusic
def make_giantsteps(root: Path) -> Path:
    test = root / "giantsteps-key-dataset"
    for i, key in enumerate(["C major", "a minor", "Db major", "-"]):
        write_wav(test / "audio" / f"{i}.LOFI.wav", CLIP)
        (test / "annotations" / "key").mkdir(parents=True, exist_ok=True)
        (test / "annotations" / "key" / f"{i}.LOFI.key").write_text(key)
    mtg = root / "giantsteps-mtg-key-dataset"
    rows = ["ID\tMANUAL KEY\tC\tCOMMENT"]
    for i in range(30):
        write_wav(mtg / "audio" / f"{1000 + i}.LOFI.wav", CLIP)
        rows.append(f"{1000 + i}\t{['G major', 'A# minor', 'E minor', 'D dorian'][i % 4]}\t2\t")
    (mtg / "annotations").mkdir(parents=True, exist_ok=True)
    (mtg / "annotations" / "annotations.txt").write_text("\n".join(rows) + "\n")
    return root


def test_giantsteps_key(tmp_path):
    task = ADAPTERS["giantsteps-key"](make_giantsteps(tmp_path))
    assert task.kind == "key" and task.classes == list(KEYS)
    counts = task.counts()
    assert counts["test"] == 3 and counts["train"] + counts["valid"] == 23  # 30 minus the 7 modal labels
    assert sorted(task.classes[e.target] for e in task.split("test")) == ["A minor", "C major", "C# major"]
    assert normalise_key("A# minor") == "Bb minor" and normalise_key("eb Major") == "Eb major"
    assert normalise_key("D dorian") is None and normalise_key("-") is None


def make_emomusic(root: Path) -> Path:
    rows = ["song_id, mean_arousal, std_arousal, mean_valence, std_valence"]
    info = ["song_id,file_name,Artist,Song title,start of the segment (min.sec),end of the segment (min.sec),Genre,"
            "Mediaeval 2013 set"]  # fmt: skip
    for i in range(2, 42):
        write_wav(root / "clips_45seconds" / f"{i}.wav", CLIP)
        rows.append(f"{i},{i / 10:.1f},1.0,{9 - i / 10:.1f},1.0")
        info.append(f"{i},{i}.mp3,a,b,0,45,Rock,{'evaluation' if i % 4 == 0 else 'development'}")
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "static_annotations.csv").write_text("\n".join(rows) + "\n")
    (root / "annotations" / "songs_info.csv").write_text("\n".join(info) + "\n")
    return root


def test_emomusic(tmp_path):
    task = ADAPTERS["emomusic"](make_emomusic(tmp_path))
    assert task.kind == "regression" and task.classes == ["valence", "arousal"] and task.window == 5.0
    assert task.counts()["test"] == 10  # the MediaEval 2013 evaluation set
    e = next(e for e in task.examples if e.path.stem == "5")
    assert e.target.tolist() == pytest.approx([8.5, 0.5])


# ------------------------------------------------------------------------------------------ NSynth and VocalSet
def make_nsynth(root: Path) -> Path:
    for split, n in (("train", 22), ("valid", 3), ("test", 3)):
        notes = {}
        for i in range(n):
            family = NSYNTH_FAMILIES[i % len(NSYNTH_FAMILIES)]
            pitch = 21 + (i * 7) % 88
            note = f"{family}_acoustic_{i:03d}-{pitch:03d}-100"
            notes[note] = {"pitch": pitch, "instrument_family_str": family, "velocity": 100}
            write_wav(root / f"nsynth-{split}" / "audio" / f"{note}.wav", CLIP)
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(notes))
    return root


def test_nsynth_instrument_and_pitch(tmp_path):
    root = make_nsynth(tmp_path)
    inst, pitch = ADAPTERS["nsynth-instrument"](root), ADAPTERS["nsynth-pitch"](root)
    assert inst.counts() == pitch.counts() == {"train": 22, "valid": 3, "test": 3}
    assert inst.classes == list(NSYNTH_FAMILIES) and len(pitch.classes) == 128 and pitch.kind == "pitch"
    e = pitch.split("valid")[1]
    assert e.target == 28 and e.path.name == "brass_acoustic_001-028-100.wav"


def make_vocalset(root: Path) -> Path:
    for singer in SINGERS:
        for t, technique in enumerate(TECHNIQUES + ("fast_forte",)):
            context = "scales" if t % 2 else "arpeggios"
            for vowel in "ae":
                write_wav(
                    root / "FULL" / singer / context / technique / f"{singer}_{context}_{technique}_{vowel}.wav", CLIP
                )
    return root


def test_vocalset_technique_and_singer(tmp_path):
    root = make_vocalset(tmp_path)
    tech = ADAPTERS["vocalset-technique"](root)
    assert tech.classes == list(TECHNIQUES) and len(tech.examples) == 20 * 10 * 2
    test_singers = {e.path.name.split("_")[0] for e in tech.split("test")}
    assert test_singers == {"f2", "f8", "m3", "m4", "m5"}
    assert not test_singers & {e.path.name.split("_")[0] for e in tech.split("train")}  # singer-disjoint
    singer = ADAPTERS["vocalset-singer"](root)
    assert singer.classes == list(SINGERS) and len(singer.examples) == 20 * 11 * 2
    assert all(singer.classes[e.target] == e.path.name.split("_")[0] for e in singer.examples)


# ------------------------------------------------------------------------------------------ MUSDB18
def make_musdb(root: Path, seconds: float = 2.5) -> Path:
    names = {"train": ["Actions - One Minute Smile", "A - One", "B - Two"], "test": ["C - Three"]}
    for part, tracks in names.items():
        for k, track in enumerate(tracks):
            stems = {s: tone(110.0 * (i + 1) * (k + 1), seconds, seed=i) for i, s in enumerate(SOURCES)}
            for s, x in stems.items():
                write_wav(root / part / track / f"{s}.wav", x)
            write_wav(root / part / track / "mixture.wav", sum(stems.values()))
    return root


def test_musdb18_excerpts_and_validation_tracks(tmp_path):
    task = ADAPTERS["musdb18"](make_musdb(tmp_path))
    assert task.kind == "separation" and task.classes == list(SOURCES)
    assert task.counts() == {"train": 2, "valid": 1, "test": 1}
    e = task.split("valid")[0]
    assert e.path.parent.name == "Actions - One Minute Smile" and set(e.target) == set(SOURCES)
    assert e.start == 0.0 and e.duration == pytest.approx(2.5)


def test_adapter_errors_name_the_missing_part(tmp_path):
    with pytest.raises(TaskError, match="annotations_final.csv: not found"):
        ADAPTERS["mtt"](tmp_path)
    with pytest.raises(TaskError, match="nsynth-train: not found"):
        ADAPTERS["nsynth-pitch"](tmp_path)
    with pytest.raises(TaskError, match="FULL: not found"):
        ADAPTERS["vocalset-singer"](tmp_path)


# ------------------------------------------------------------------------------------------ end to end through probe()
def test_separation_probe_end_to_end(tmp_path):
    from mert.probe import probe
    from mert.probe.params import ProbeParams

    root = make_musdb(tmp_path / "musdb")
    params = ProbeParams(lrs=[1e-2], max_epochs=3, patience=2, lstm_hidden=8, lstm_layers=1, cache_dir="")
    report = probe("mfcc", f"musdb18:{root}", tmp_path / "sep.json", params)
    assert report["metric"] == "sdr" and set(report["per_layer"]) == {"0"}
    assert {f"sdr_{s}" for s in SOURCES} <= set(report["test_metrics"]) and np.isfinite(report["test_score"])


def test_adapter_spec_from_params_datasets(tmp_path):
    from mert.probe.api import resolve_task
    from mert.probe.params import ProbeParams

    root = make_gtzan(tmp_path)
    task = resolve_task("gtzan-genre", params=ProbeParams(datasets={"gtzan-genre": str(root)}))
    assert task.name == "gtzan-genre" and task.root == root
    with pytest.raises(TaskError, match="needs a dataset root"):
        resolve_task("gtzan-genre", params=ProbeParams())
