"""The team stack, natively, on loopback: ``infra/local/start.sh --team`` (PostgreSQL, an MLflow tracking server on it
with proxied artifacts, a Prefect server on it, a process work pool with two workers) and ``stop.sh``.

Against it, with nothing but ``PREFECT_API_URL`` / ``MLFLOW_TRACKING_URI``:

* two pipeline deployment runs at once (one per worker): the demo's shape, and ``pretrain-95m``'s shape (tiny
  profile, torchrun with 2 ranks, ``max_restarts`` 1) with a rank SIGKILLed mid-run; both complete, each run,
  metric and model version is recorded once, the aliases end where the promotion rule says, each model card
  describes its own version, and the killed run's weights equal an uninterrupted run's bit for bit;
* the tracking server SIGKILLed in the middle of ``mert pretrain``: training goes on; the run is completed when the
  server is back, or the command says what was not logged and running it again completes it; ``mert probe`` logs;
* ``stop.sh`` stops exactly what ``start.sh`` started.

One module-scoped stack; the tests run in file order and share it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The started stack: its state dir, ports, environment and the ``start.sh`` / ``stop.sh`` calls."""

    def __init__(self, state: Path):
        self.state = state
        self.ports = {k: _free_port() for k in ("PREFECT_PORT", "MLFLOW_PORT", "WORKER_PORT", "WORKER2_PORT",
                                                "PG_PORT")}  # fmt: skip
        self.env = {
            **os.environ,
            **{k: str(v) for k, v in self.ports.items()},
            "MERT_LOCAL_STATE": str(state),
            "MERT_MODEL_CACHE": str(state / "model-cache"),  # registry downloads: not into ~/.cache
            "MERT_VENV": str(Path(sys.executable).parent.parent),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
            self.env.pop(key, None)
        self.api = f"http://127.0.0.1:{self.ports['PREFECT_PORT']}/api"
        self.tracking = f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """What a user sets to use the stack: the two URLs, nothing else."""
        return {**self.env, "PREFECT_API_URL": self.api, "MLFLOW_TRACKING_URI": self.tracking, **extra}

    def start(self) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", str(ROOT / "infra/local/start.sh"), "--team"], env=self.env,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + self.logs()
        return r

    def stop(self) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "infra/local/stop.sh")], env=self.env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.state.glob("*.pid")}

    def logs(self, tail: int = 3000) -> str:
        return "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}" for p in
                       sorted(self.state.glob("*.log")))  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # PostgreSQL refuses root, so under root it runs as an unprivileged account, which must reach its data dir:
    # pytest's tmp dirs are mode 700, so the state lives in a world-traversable temp dir of its own.
    state = Path(tempfile.mkdtemp(prefix="mert-team-"))
    state.chmod(0o755)
    s = Stack(state)
    t0 = time.monotonic()
    s.start()
    print(f"\nteam stack started in {time.monotonic() - t0:.0f} s")
    yield s
    s.stop()
    kept = tmp_path_factory.mktemp("team-stack-logs")  # pytest keeps its last 3 base temp dirs
    for log in state.glob("*.log"):
        shutil.copy(log, kept / log.name)
    print(f"team stack logs kept in {kept}")
    shutil.rmtree(state, ignore_errors=True)


def _group_pids(pgid: int) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def test_the_stack_is_native_on_loopback_with_generated_credentials(stack):
    import psutil
    import psycopg2

    assert set(stack.pids()) == {"postgres", "mlflow", "prefect", "worker-1", "worker-2"}
    creds = dict(line.split("=", 1) for line in (stack.state / "credentials.env").read_text().split())
    assert stat.S_IMODE((stack.state / "credentials.env").stat().st_mode) == 0o600 and len(creds["PG_PASSWORD"]) >= 30
    assert creds["PG_PASSWORD"] not in subprocess.run(["git", "grep", "-I", "-c", creds["PG_PASSWORD"][:12]], cwd=ROOT,
                                                      capture_output=True, text=True).stdout  # fmt: skip
    port = stack.ports["PG_PORT"]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=port, user=creds["PG_USER"], password="wrong", dbname="postgres")
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=creds["PG_USER"], password=creds["PG_PASSWORD"],
                            dbname="mlflow")  # fmt: skip
    with conn, conn.cursor() as cur:
        cur.execute("select version()")
        assert cur.fetchone()[0].startswith("PostgreSQL")
        cur.execute("select count(*) from information_schema.tables where table_name = 'experiments'")
        assert cur.fetchone()[0] == 1  # the tracking server's schema lives in PostgreSQL
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=creds["PG_USER"], password=creds["PG_PASSWORD"],
                            dbname="prefect")  # fmt: skip
    with conn, conn.cursor() as cur:
        cur.execute("select count(*) from information_schema.tables where table_name = 'flow_run'")
        assert cur.fetchone()[0] == 1  # and the Prefect server's
    # every listening socket of the stack's processes is on 127.0.0.1
    listening = []
    for name, pgid in stack.pids().items():
        for pid in _group_pids(pgid):
            try:
                conns = psutil.Process(pid).net_connections(kind="inet")
            except psutil.Error:
                continue
            listening += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening
    assert {stack.ports[k] for k in ("PG_PORT", "MLFLOW_PORT", "PREFECT_PORT")} <= {p for _, _, p in listening}
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "work-pool", "inspect", "mert-cpu"],
                       env=stack.client_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    workers = _workers(stack)
    assert len([w for w in workers if w["status"] == "ONLINE"]) == 2, workers


def _workers(stack: Stack) -> list[dict]:
    code = ("import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
            "async def main():\n    async with get_client() as c:\n"
            "        ws = await c.read_workers_for_work_pool('mert-cpu')\n"
            "        print(json.dumps([{'name': w.name, 'status': str(w.status.value)} for w in ws]))\n"
            "asyncio.run(main())\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=stack.client_env(), capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- two pipelines
def _params(seed: int, micro: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(source="synthetic", n_clips=4, min_seconds=5.0, max_seconds=6.0, task_clips=24,
                          task_seconds=2.0, bad_files=False)  # fmt: skip
    params["probe"].update(lrs=[1e-3], max_epochs=3, patience=2, bootstrap=100)
    params["pretrain"].update(profile="mert-tiny", tracking_wait=120)
    params["pretrain"]["profiles"]["mert-tiny"].update(
        max_steps=12, warmup_steps=2, save_interval=3, log_interval=1, val_interval=0, micro_batch_clips=micro,
        batch_seconds=16.0, seed=seed, loader_prefetch=2)  # fmt: skip
    return params


def _project(root: Path) -> tuple[Path, Path]:
    """Workdir A holds the flows and prefect.yaml the workers run (MERT_PROJECT_DIR); workdir B only params.yaml.

    A: the demo deployment's shape, 1 process, micro-batches of 8 x 2 s (one 16 s micro-batch per step).
    B: ``pretrain-95m``'s shape on the CPU pool: 2 ranks of 4 x 2 s each (16 s per step), ``max_restarts`` 1,
    2 labelling shards, another seed (another model, so that the promotion rule has something to decide).
    """
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    shutil.copytree(ROOT / "flows", a / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    deploy = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    demo, p95 = (next(d for d in deploy["deployments"] if d["name"] == n) for n in ("demo", "pretrain-95m"))
    deploy["deployments"] = [demo, p95]  # pretrain-330m's pool (mert-gpu) has no worker here
    probe = {"baselines": ["mfcc"], "probe_tasks": ["data/demo/tasks/pitch"]}
    demo["parameters"].update(probe)
    p95["parameters"].update(probe | {"profiles": ["mert-tiny"], "nproc_per_node": 2, "label_shards": 2})
    assert p95["parameters"]["max_restarts"] == 1  # the deployment as committed
    p95["work_pool"] = {"name": "mert-cpu", "job_variables": {"env": {"CUDA_VISIBLE_DEVICES": ""}}}
    (a / "prefect.yaml").write_text(yaml.safe_dump(deploy, sort_keys=False))
    (a / "params.yaml").write_text(yaml.safe_dump(_params(seed=1337, micro=8)))
    (b / "params.yaml").write_text(yaml.safe_dump(_params(seed=7, micro=4)))
    return a, b


RUN_TWO = """
import asyncio, json, sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

async def main(a, b):
    runs = [await run_deployment("mert-pipeline/demo", parameters={"workdir": a}, timeout=0),
            await run_deployment("mert-pipeline/pretrain-95m", parameters={"workdir": b}, timeout=0)]
    print(json.dumps({"created": [str(r.id) for r in runs]}), flush=True)
    async with get_client() as c:
        while True:
            states = [(await c.read_flow_run(r.id)) for r in runs]
            if all(s.state.is_final() for s in states):
                break
            await asyncio.sleep(2)
    print(json.dumps({"states": [s.state.type.value for s in states],
                      "messages": [s.state.message for s in states]}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _rank_in(workdir: Path, rank: int):
    """A live torchrun worker of ``rank`` whose working directory is ``workdir``."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.cwd() != str(workdir) or "mert.cli" not in " ".join(proc.cmdline()):
                continue
            e = proc.environ()
        except (psutil.Error, OSError):
            continue
        if "TORCHELASTIC_RUN_ID" in e and e.get("RANK") == str(rank):
            return proc
    return None


def test_two_pipeline_runs_at_once_record_everything_once(stack, tmp_path):
    from mlflow.tracking import MlflowClient

    from mert.tracking import read_jsonl
    from mert.train import checkpoint as ckpt

    root = Path(tempfile.mkdtemp(prefix="mert-pipelines-"))
    a, b = _project(root)
    env = stack.client_env(MERT_PROJECT_DIR=str(a))
    t0 = time.monotonic()
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"], cwd=a,
                       env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t_deploy = time.monotonic() - t0
    runner = subprocess.Popen([sys.executable, "-c", RUN_TWO, str(a), str(b)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    out_b = b / "data/pretrain/mert-tiny"
    killed = None
    deadline = time.monotonic() + 1500
    try:
        while killed is None and runner.poll() is None:  # SIGKILL rank 1 of B after a checkpoint, mid-interval
            assert time.monotonic() < deadline, "pipeline B never reached a point to kill"
            done = [s for s, _ in ckpt.list_checkpoints(out_b / "checkpoints")]
            rows = read_jsonl(out_b / "metrics.jsonl") if (out_b / "metrics.jsonl").exists() else []
            if done and rows and done[-1] < rows[-1]["step"] < 11:
                proc = _rank_in(b, 1)
                if proc is not None:
                    proc.send_signal(signal.SIGKILL)
                    killed = (done[-1], rows[-1]["step"])
            time.sleep(0.05)
        stdout, stderr = runner.communicate(timeout=max(10.0, deadline - time.monotonic()))
    finally:
        if runner.poll() is None:
            runner.kill()
    t_runs = time.monotonic() - t0 - t_deploy
    print(f"deploy {t_deploy:.0f} s; two pipeline runs at once {t_runs:.0f} s; rank 1 of B killed after checkpoint "
          f"{killed and killed[0]} with step {killed and killed[1]} journaled")  # fmt: skip
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["states"] == ["COMPLETED", "COMPLETED"], (result, stderr[-3000:], stack.logs(6000))
    assert killed is not None, "the rank was never killed"
    logs = [(stack.state / f"worker-{i}.log").read_text() for i in (1, 2)]
    created = json.loads(stdout.strip().splitlines()[0])["created"]
    assert sorted(sum(run in log for run in created) for log in logs) == [1, 1], created  # one run per worker
    assert "exitcode: -9" in "".join(logs) and "".join(logs).count("resumed from") >= 2

    # B's weights: an uninterrupted run of the same recipe (1 process, 2 accumulated micro-batches), bit for bit
    ref = subprocess.run([sys.executable, "-m", "mert.cli", "pretrain", "data/corpus", "data/labels", "ref",
                          "--profile", "mert-tiny", "--tracker", "disk", "--device", "cpu"], cwd=b,
                         env=stack.env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    x = ckpt.load_checkpoint(b / "ref/checkpoints/step-00000012/checkpoint.pt")
    y = ckpt.load_checkpoint(out_b / "checkpoints/step-00000012/checkpoint.pt")
    assert (y["config"]["world_size"], x["config"]["grad_accum"]) == (2, 2)
    assert all(x["model"][k].equal(y["model"][k]) for k in x["model"]) and x["train_state"] == y["train_state"]

    client = MlflowClient(stack.tracking, registry_uri=stack.tracking)
    results = {w: json.loads((w / "data/pretrain/mert-tiny/result.json").read_text()) for w in (a, b)}
    runs = client.search_runs([client.get_experiment_by_name("mert-pretrain").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(res["run_id"] for res in results.values())
    for run in runs:
        assert run.info.status == "FINISHED"
        counts = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss/total"))
        assert sorted(counts) == list(range(1, 13)) and set(counts.values()) == {1}, counts
    versions = {v.version: v for v in client.search_model_versions("name = 'mert-tiny'")}
    assert sorted(versions) == sorted(res["registered_version"] for res in results.values())
    assert sorted(v.run_id for v in versions.values()) == sorted(r.info.run_id for r in runs)
    probes = client.search_runs([client.get_experiment_by_name("mert-probe").experiment_id])
    assert sorted(p.data.tags["registered_version"] for p in probes) == sorted(versions)  # one tracked probe each
    score = {v: float(mv.tags["probe.pitch.accuracy"]) for v, mv in versions.items()}
    model = client.get_registered_model("mert-tiny")
    assert str(model.aliases["candidate"]) == max(versions, key=int)  # the newest registration
    assert score[str(model.aliases["champion"])] == max(score.values())  # serialised: the better one wins
    for v, mv in versions.items():  # each card is its own version's: its run, its step, its probe score
        card = mv.description
        assert f"version {v}" in card and mv.run_id in card and f"{score[v]:.3f}" in card, card[:2000]
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- tracker killed
def _journal_step(out: Path) -> int:
    from mert.tracking import read_jsonl

    rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    return rows[-1]["step"] if rows else 0


def _kill_tracker(stack: Stack) -> None:
    pgid = stack.pids()["mlflow"]
    os.killpg(pgid, signal.SIGKILL)
    while _group_pids(pgid):
        time.sleep(0.1)


def test_tracking_server_killed_mid_run(stack, corpus_dir, demo_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.train.conftest import tiny_profile
    from tests.train.helpers import write_params

    prof = tiny_profile(max_steps=30, save_interval=5, loader_prefetch=2)
    patient = write_params(tmp_path / "patient.yaml", prof, tracker="mlflow", tracking_wait=240)
    hasty = write_params(tmp_path / "hasty.yaml", prof, tracker="mlflow", tracking_wait=5)
    env = stack.client_env()

    def pretrain(out: Path, params: Path) -> list[str]:
        return [sys.executable, "-m", "mert.cli", "pretrain", str(corpus_dir), "hash:8:1024", str(out), "--params",
                str(params), "--device", "cpu"]  # fmt: skip

    # 1. killed at step 5 and started again at once: training goes on; the end of the run waits for the server
    t0 = time.monotonic()
    proc = subprocess.Popen(pretrain(tmp_path / "one", patient), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while _journal_step(tmp_path / "one") < 5:
        assert proc.poll() is None and time.monotonic() - t0 < 300, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    _kill_tracker(stack)
    t_kill = time.monotonic()
    stack.start()  # start.sh is idempotent: only the MLflow server starts again
    t_back = time.monotonic()
    out, err = proc.communicate(timeout=600)
    print(f"\nrun 1: tracker killed at step 5 ({t_kill - t0:.0f} s), back after {t_back - t_kill:.0f} s; "
          f"run ended at {time.monotonic() - t0:.0f} s")  # fmt: skip
    assert proc.returncode == 0, err[-4000:]
    assert "MLflow metrics logging failed" in err and "database is locked" not in err
    res = json.loads((tmp_path / "one/result.json").read_text())
    assert "tracking_pending" not in res and res["registered_version"]
    client = MlflowClient(stack.tracking, registry_uri=stack.tracking)
    _assert_complete(client, res["run_id"], 30)

    # 2. killed and not back within tracking_wait: the command says plainly what was not logged; checkpoints are
    # intact; run again once the server is back, it trains nothing and completes the run
    t0 = time.monotonic()
    proc = subprocess.Popen(pretrain(tmp_path / "two", hasty), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while _journal_step(tmp_path / "two") < 5:
        assert proc.poll() is None and time.monotonic() - t0 < 300, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    _kill_tracker(stack)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    message = err.strip().splitlines()[-1]
    assert message.startswith("mert pretrain: error: training finished at step 30"), err[-3000:]
    assert re.search(r"not logged: \d+ metric values of steps \d+-30 ", message), message  # what was sent stops at ~5
    assert "registration" in message and "Run the same command again" in message
    assert "Traceback" not in err
    from mert.train import checkpoint as ckpt

    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "two/checkpoints")][-1] == 30
    pending = json.loads((tmp_path / "two/result.json").read_text())["tracking_pending"]
    assert any("registration" in p for p in pending)
    stack.start()
    again = subprocess.run(pretrain(tmp_path / "two", hasty), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "completing its MLflow run" in again.stderr and "resumed from" not in again.stderr  # trains nothing
    res = json.loads((tmp_path / "two/result.json").read_text())
    assert "tracking_pending" not in res and res["registered_version"]
    _assert_complete(client, res["run_id"], 30)
    print(f"run 2: exit 1 with what was not logged, completed by a rerun: {time.monotonic() - t0:.0f} s")

    # mert probe, pointed at the server by MLFLOW_TRACKING_URI only
    task = demo_dir / "tasks" / "pitch"
    r = subprocess.run([sys.executable, "-m", "mert.cli", "probe", "--model", "mfcc", "--task", str(task), "--out",
                        str(tmp_path / "probe/results.json"), "--mlflow"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    probes = client.search_runs([client.get_experiment_by_name("mert-probe").experiment_id],
                                filter_string="tags.model = 'mfcc'")  # fmt: skip
    assert [p.info.status for p in probes] == ["FINISHED"]


def _assert_complete(client, run_id: str, steps: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    counts = collections.Counter(m.step for m in client.get_metric_history(run_id, "train/loss/total"))
    assert sorted(counts) == list(range(1, steps + 1)) and set(counts.values()) == {1}, counts
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    assert len(versions) == 1 and versions[0].tags["step"] == str(steps)


# ---------------------------------------------------------------------------------------------- stop
def test_stop_stops_exactly_what_start_started(stack):
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # not ours to stop
    groups = {name: _group_pids(pgid) for name, pgid in stack.pids().items()}
    assert all(groups.values()), groups
    t0 = time.monotonic()
    r = stack.stop()
    print(f"\nstop.sh: {time.monotonic() - t0:.0f} s\n{r.stdout}")
    assert r.returncode == 0, r.stderr
    lines = [ln.split()[2] for ln in r.stdout.splitlines() if ln.startswith("local: stopped")]
    assert lines == ["worker-1", "worker-2", "mlflow", "prefect", "postgres"]  # workers first, PostgreSQL last
    import psutil

    left = [pid for pids in groups.values() for pid in pids if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert not left, left
    assert not list(stack.state.glob("*.pid"))
    assert bystander.poll() is None
    bystander.kill()
    bystander.wait()
    assert "database system is shut down" in (stack.state / "postgres.log").read_text()  # a clean shutdown
