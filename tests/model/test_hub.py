"""Loading by Hugging Face hub id from a temp HF cache, offline; never running the repo's code; clear errors."""

from __future__ import annotations

import hashlib
import json
import socket
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import MERT, MERTConfig
from mert.cli import main
from mert.model.hf import ModelNotFoundError, is_hub_id, split_revision

REPO = "m-a-p/MERT-v1-95M"
SHA = "2f3a3ac6f8e0d5c1b4a7e9d2c6b8a0f1e3d5c7b9"
CUSTOM_CODE = "import pathlib\npathlib.Path({sentinel!r}).write_text('ran')\nraise SystemExit('custom code ran')\n"


def write_hub_cache(home, model: MERT, sentinel, safetensors: bool = True, sha: str = SHA, repo: str = REPO) -> None:
    """An HF cache as ``huggingface_hub`` lays it out: ``hub/models--ORG--NAME/{blobs,snapshots/SHA,refs/main}``.

    The snapshot holds the released layout plus the repo's custom code (``auto_map``), which must never run.
    """
    export = home / "export"
    model.save_pretrained(export, safe_serialization=safetensors)
    config = json.loads((export / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"}
    config |= {"architectures": ["MERTModel"], "model_type": "mert_model", "auto_map": auto_map}
    (export / "config.json").write_text(json.dumps(config))
    for name in ("modeling_MERT.py", "configuration_MERT.py"):
        (export / name).write_text(CUSTOM_CODE.format(sentinel=str(sentinel)))
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in export.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(blob)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(sha)


@pytest.fixture
def refused_endpoint():
    """An endpoint whose connections are refused at once: a bound socket that never listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def hub(tmp_path, monkeypatch, refused_endpoint):
    """HF_HOME at a temp cache holding REPO; the hub itself unreachable (never the network in tests)."""
    torch.manual_seed(0)
    model = MERT(MERTConfig.from_name("mert-tiny")).eval()
    sentinel = tmp_path / "custom-code-ran"
    home = tmp_path / "hf"
    write_hub_cache(home, model, sentinel)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", refused_endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model, home, sentinel


def assert_same_weights(a: MERT, b: MERT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_hub_id_syntax():
    assert is_hub_id("m-a-p/MERT-v1-95M") and is_hub_id("m-a-p/MERT-v1-95M@main")
    assert not is_hub_id("mfcc") and not is_hub_id("random:mert-tiny") and not is_hub_id("models:/a@b")
    assert not is_hub_id("a/b/c") and not is_hub_id("/abs/dir")
    assert split_revision("o/n@v1.0") == ("o/n", "v1.0") and split_revision("o/n") == ("o/n", None)


@pytest.mark.parametrize("spec, kwargs", [(REPO, {}), (REPO + "@main", {}), (REPO, {"revision": SHA})],
                         ids=["id", "id@main", "revision=sha"])  # fmt: skip
def test_from_pretrained_hub_id_offline_from_the_cache(hub, spec, kwargs):
    model, home, sentinel = hub
    loaded = MERT.from_pretrained(spec, **kwargs)
    assert_same_weights(loaded, model)
    assert not sentinel.exists() and "modeling_MERT" not in sys.modules and "configuration_MERT" not in sys.modules


def test_cached_model_loads_when_the_hub_is_unreachable(hub, monkeypatch):
    """Not offline, but the endpoint refuses: huggingface_hub falls back to the cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert_same_weights(MERT.from_pretrained(REPO), hub[0])


def test_bin_only_repo_and_hf_hub_cache_variable(tmp_path, monkeypatch, refused_endpoint):
    torch.manual_seed(1)
    model = MERT(MERTConfig.from_name("mert-tiny", do_stable_layer_norm=True))
    write_hub_cache(tmp_path / "other", model, tmp_path / "sentinel", safetensors=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other" / "hub"))  # wins over HF_HOME
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", refused_endpoint)
    loaded = MERT.from_pretrained(REPO)
    assert loaded.config.do_stable_layer_norm
    assert_same_weights(loaded, model)


def test_not_cached_and_offline_names_the_id_the_cache_and_the_variable(hub):
    with pytest.raises(ModelNotFoundError) as e:
        MERT.from_pretrained("m-a-p/MERT-v1-330M")
    msg = str(e.value)
    assert "m-a-p/MERT-v1-330M" in msg and str(hub[1] / "hub") in msg
    assert "HF_HUB_OFFLINE=1" in msg and "HF_HOME" in msg


def test_not_cached_and_hub_unreachable_names_the_endpoint(hub, monkeypatch, refused_endpoint):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match=r"m-a-p/MERT-v1-330M: .*cache .*HF_HOME.*cannot be reached") as e:
        MERT.from_pretrained("m-a-p/MERT-v1-330M")
    assert refused_endpoint in str(e.value)
    with pytest.raises(ModelNotFoundError, match="no such directory, and not a Hugging Face hub id"):
        MERT.from_pretrained("not/a/hub/id")


def test_unknown_revision_is_not_found(hub):
    with pytest.raises(ModelNotFoundError, match=r"MERT-v1-95M@v9"):
        MERT.from_pretrained(REPO, revision="v9")


def test_extract_cli_takes_a_hub_id_and_negative_layers(hub, tmp_path, write_audio, capsys):
    model = hub[0]
    wav = write_audio("in/a.wav", 0.1 * np.random.default_rng(0).standard_normal(24_000).astype(np.float32), 24_000)
    code = main(["extract", str(wav), "-o", str(tmp_path / "out"), "-m", REPO, "--layers", "-1,0", "--no-progress"])
    assert code == 0, capsys.readouterr()
    got = np.load(tmp_path / "out" / "a.mean.npy")  # (2, D): layers -1 and 0, time-averaged
    audio, _ = sf.read(wav, dtype="float32")
    with torch.no_grad():
        states = model(torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states
    want = torch.stack([states[-1][0].mean(0), states[0][0].mean(0)]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_extract_cli_unknown_hub_id_exits_1_with_the_message(hub, tmp_path, write_audio, capsys):
    wav = write_audio("in/a.wav", np.zeros(24_000, np.float32) + 0.1, 24_000)
    assert main(["extract", str(wav), "-o", str(tmp_path / "out"), "-m", "m-a-p/MERT-v1-330M", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "m-a-p/MERT-v1-330M" in err and "HF_HUB_OFFLINE=1" in err and "Traceback" not in err


def test_probe_model_spec_takes_a_hub_id(hub):
    from mert.probe.models import ModelSpecError, load_model

    feats = load_model(REPO + "@main")
    assert feats.identity["hub_id"] == REPO and feats.identity["hub_commit"] == SHA
    assert_same_weights(feats.model, hub[0])
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE"):
        load_model("m-a-p/MERT-v1-330M")
