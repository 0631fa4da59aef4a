"""What `mert ingest` and the decoder say: no audio found, a clean console on broken mp3s, silent clips named so."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mert import audio as A
from mert.cli import main

MPG123_NOISE = ("Illegal Audio-MPEG-Header", "Trying to resync", "Hit end of (available) data")


def test_ingest_of_a_directory_without_audio_says_so_and_exits_0(tmp_path: Path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no audio here")
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "corpus"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"no audio files found under {tmp_path / 'src'}" in out and ".wav" in out and ".mp3" in out


def test_broken_mp3_leaves_no_decoder_noise_and_a_clear_reason(tmp_path: Path, capfd):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad-not-audio.mp3").write_text("this is a text file with an audio extension\n")
    assert main(["ingest", str(src), str(tmp_path / "corpus"), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert not any(n in err or n in out for n in MPG123_NOISE), err
    assert "not decodable as audio x1" in out
    rejects = (tmp_path / "corpus" / "rejects.csv").read_text()
    assert "bad-not-audio.mp3" in rejects and "not decodable as audio" in rejects


def test_quiet_mp3_decoder_keeps_other_stderr_output(tmp_path: Path, capfd):
    with A.quiet_mp3_decoder(tmp_path / "x.mp3"):
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 40.\n")
        os.write(2, b"a real error from somewhere else\n")
        os.write(2, b"[src/libmpg123/parse.c:do_readahead():1099] warning: Cannot read next header\n")
    err = capfd.readouterr().err
    assert err == "a real error from somewhere else\n"
    with A.quiet_mp3_decoder(tmp_path / "x.wav"):  # other formats: untouched
        os.write(2, b"Note: passes through\n")
    assert capfd.readouterr().err == "Note: passes through\n"


def test_valid_mp3_still_decodes(tmp_path: Path, write_audio):
    t = np.arange(24000 * 2) / 24000
    path = write_audio("tone.mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000)
    audio = A.load_audio(path)
    assert audio.shape[0] > 24000 and np.abs(audio).max() > 0.1


@pytest.mark.parametrize(
    ("audio", "threshold", "reason"),
    [
        (np.zeros(24000, np.float32), -np.inf, "silent (digital silence: every sample is 0)"),
        (np.full(24000, 1e-4, np.float32), -60.0, "silent (peak -80.0 dBFS <= -60 dBFS)"),
    ],
    ids=["digital-silence", "below-threshold"],
)
def test_silence_is_called_silent(tmp_path: Path, audio, threshold, reason):
    with pytest.raises(A.AudioError) as e:
        A.check_signal(tmp_path / "x.wav", audio, threshold)
    assert e.value.reason == reason and "-inf" not in e.value.reason
