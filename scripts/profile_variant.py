r"""Pretrain a variant of a pretraining profile and probe it on the demo tasks: one row of a follow-up experiment.

    .venv/bin/python scripts/profile_variant.py NAME --corpus data/corpus --labels data/labels \
        --tasks data/demo/tasks --out data/variants [--base mert-small] [KEY=VALUE ...]

KEY is a profile field (``max_steps=1800``) or ``model_overrides.X`` / ``objective_overrides.X``
(``objective_overrides.pred_nomask_weight=1.0``); VALUE is YAML. The variant's params file is ``OUT/NAME/params.yaml``
(params.yaml with the profile ``NAME`` added and selected, disk tracker, no registration); the run goes to
``OUT/NAME/run`` (``mert pretrain``, resumable), the probes to ``OUT/NAME/probe/<task>/results.json`` (``mert probe``,
two at a time, one thread each). Prints one line per task: test score [95% CI] and the per-layer test scores.
Compare two rows with ``mert probe-compare`` (paired bootstrap), e.g. against ``random:OUT/NAME/run/export``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MERT = str(Path(sys.executable).with_name("mert"))


def variant_params(base_params: Path, base: str, name: str, overrides: list[str]) -> dict:
    """params.yaml with profile ``name`` = ``base`` + ``overrides`` selected (disk tracker, no registration)."""
    params = yaml.safe_load(base_params.read_text())
    profile = copy.deepcopy(params["pretrain"]["profiles"][base])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"profile_variant: {item!r} is not KEY=VALUE")
        section, dot, field = key.partition(".")
        if dot:
            profile.setdefault(section, {})[field] = yaml.safe_load(value)
        else:
            profile[key] = yaml.safe_load(value)
    params["pretrain"]["profiles"][name] = profile
    params["pretrain"].update(profile=name, tracker="disk", register=False)
    return params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE (profile field, model_overrides.X, objective_overrides.X)")
    ap.add_argument("--base", default="mert-small", help="pretrain.profiles entry to start from")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--tasks", type=Path, required=True, help="directory of probing tasks (data/demo/tasks)")
    ap.add_argument("--task-names", nargs="+", default=["key", "instrument", "pitch", "tempo"])
    ap.add_argument("--out", type=Path, default=Path("data/variants"))
    ap.add_argument("--probe-workers", type=int, default=2)
    args = ap.parse_args(argv)

    out = (args.out / args.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(variant_params(args.params, args.base, args.name, args.overrides)))
    corpus, labels = str(Path(args.corpus).resolve()), str(Path(args.labels).resolve())
    with open(out / "pretrain.log", "w") as log:
        subprocess.run([MERT, "pretrain", corpus, labels, str(out / "run"), "--params", str(params_file),
                        "--device", "cpu"], cwd=out, stdout=log, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = max(1, args.probe_workers)
    for w in range(0, len(args.task_names), workers):  # waves of `workers` probes, one thread each
        running = []
        for task in args.task_names[w : w + workers]:
            log = open(out / f"probe-{task}.log", "w")  # noqa: SIM115 (closed when its process ends, below)
            cmd = [MERT, "probe", "--model", str(out / "run" / "export"), "--task", str((args.tasks / task).resolve()),
                   "--out", str(out / "probe" / task / "results.json")]  # fmt: skip
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        for proc, log in running:
            rc = proc.wait()
            log.close()
            if rc:
                raise SystemExit(f"profile_variant: mert probe failed, see {log.name}")
    for task in args.task_names:
        r = json.loads((out / "probe" / task / "results.json").read_text())
        layers = {k: round(v, 3) for k, v in r["per_layer_test"].items()}
        print(f"{args.name} {task}: {r['test_score']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"(layer {r['best_layer']}; per layer {layers})")  # fmt: skip


if __name__ == "__main__":
    main()
