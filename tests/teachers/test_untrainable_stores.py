"""Label stores that cannot teach are refused before training, through the CLI: exit 1, a message, no traceback.

1. A single-code store: EnCodec weights whose codebooks were never initialised (all zero) put every frame of
   every codebook on code 0. `mert label` refuses it (the labels stay cached), `mert pretrain` refuses it too;
   `mert label --allow-single-code` accepts it loudly and `mert pretrain` then opens it with a warning.
2. Codes >= the codebook size (a store edited or written by another tool): `mert pretrain` names the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mert.cli import main
from mert.data import shards as S
from mert.teachers.labels import USAGE_FILE, LabelStore
from mert.teachers.packs import pack_paths, read_record
from mert.teachers.rvq import _bare_model
from mert.train.labels import open_labels
from tests.teachers.conftest import make_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrainable") / "corpus"
    make_corpus(root, [3.5, 3.2, 4.0], music=True)  # >= 3 s: every clip can be cropped by mert-tiny
    return root


def params(tmp_path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text + "pretrain:\n  tracker: disk\n")
    return str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_single_code_store_is_refused_by_label_and_pretrain(corpus_dir, tmp_path, capsys, caplog):
    weights = tmp_path / "encodec-uninitialised.th"
    torch.save(_bare_model(0).state_dict(), weights)  # codebooks never initialised: all zero
    p = params(tmp_path, f"label:\n  teacher: rvq\n  device: cpu\n  rvq:\n    weights: {weights}\n")
    labels = tmp_path / "labels"
    code, out, err = run(capsys, "label", corpus_dir, labels, "--params", p, "--no-progress")
    assert code == 1 and "Traceback" not in err
    assert "mert label: error: mert label refuses label store rvq-encodec24k-checkpoint" in err
    assert "codebooks 0, 1, 2, 3, 4, 5, 6, 7 each use a single code (code 0 on all" in err
    assert "1 of 1024 codes used, entropy 0.00 bits, top share 1.000" in err and "--allow-single-code" in err
    assert "code usage" in out  # the usage table came first
    store = LabelStore.open(labels)
    assert all(store.has(c) for c in S.Corpus(corpus_dir))  # labelled and cached: accepting relabels nothing

    code, out, err = run(capsys, "pretrain", corpus_dir, labels, tmp_path / "run", "--params", p, "--max-steps", 1)
    assert code == 1 and "Traceback" not in err
    assert "mert pretrain: error: mert pretrain refuses label store rvq-encodec24k-checkpoint" in err
    assert "codebooks 0, 1, 2, 3, 4, 5, 6, 7 each use a single code" in err and "--allow-single-code" in err
    assert not (tmp_path / "run" / "checkpoints").exists()

    code, out, err = run(capsys, "label", corpus_dir, labels, "--params", p, "--no-progress", "--allow-single-code")
    assert code == 0 and "WARNING (accepted with --allow-single-code)" in " ".join(out.split())
    assert json.loads((store.root / USAGE_FILE).read_text())["single_code_allowed"] is True
    caplog.clear()
    source = open_labels(labels, S.Corpus(corpus_dir))  # what mert pretrain opens: accepted, loudly
    assert source.usage["single_code_allowed"] and "ACCEPTED WITH --ALLOW-SINGLE-CODE" in caplog.text


def test_codes_outside_the_codebook_are_refused_naming_the_file(corpus_dir, tmp_path, capsys):
    p = params(
        tmp_path, "label:\n  teacher: bestrq\n  device: cpu\n  bestrq:\n    n_codebooks: 2\n    codebook_size: 64\n"
    )
    labels = tmp_path / "labels"
    code, _, err = run(capsys, "label", corpus_dir, labels, "--params", p, "--no-progress")
    assert code == 0, err
    store = LabelStore.open(labels)
    clip = S.Corpus(corpus_dir).clips[1]
    path, record = pack_paths(store.root, clip.shard)
    first = read_record(record).frame[read_record(record).find(clip.offset)]
    codes = np.load(path)
    codes[1, first + 10] = 70  # a code the 64-way head has no class for, in the pack of clip 1's shard
    np.save(path, codes)

    code, _, err = run(capsys, "pretrain", corpus_dir, labels, tmp_path / "run", "--params", p, "--max-steps", 1)
    assert code == 1 and "Traceback" not in err
    assert f"labels {path} of clip {clip.id}" in err and "codebook 1 has code 70 >= its size 64" in err
    assert not (tmp_path / "run" / "checkpoints").exists()

    (store.root / USAGE_FILE).unlink()  # no usage.json: the codes are counted (and checked) when the store opens
    code, _, err = run(capsys, "pretrain", corpus_dir, labels, tmp_path / "run2", "--params", p, "--max-steps", 1)
    assert code == 1 and "Traceback" not in err and f"labels {path}" in err and "70 >= its size 64" in err
