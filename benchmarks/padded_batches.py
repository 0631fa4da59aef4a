"""A right-padded batch with ``attention_mask``: ours vs ``transformers.HubertModel``, against the clip alone.

Same random weights (``--preset``, seed 0) in both; a batch of one full-length clip and one clip of ``--short``
seconds padded to ``--long`` seconds. For the padded clip, prints per model the relative L2 distance (over its valid
frames, min/max over hidden states) and the max abs difference between its padded-batch features and
``HubertModel`` on the clip alone (the reference). HubertModel's layer-0 GroupNorm spans the padding (group-norm
models: MERT, hubert-base), so its padded row drifts; ours takes each clip's statistics over its own samples.

    .venv/bin/python benchmarks/padded_batches.py                  # mert-95m, 5 s padded to 10 s
    .venv/bin/python benchmarks/padded_batches.py --preset mert-tiny --short 1 --long 4
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mert import MERT, MERTConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mert-95m")
    ap.add_argument("--short", type=float, default=5.0, help="seconds of the padded clip")
    ap.add_argument("--long", type=float, default=10.0, help="seconds of the batch (the other clip)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = MERT(MERTConfig.from_name(args.preset)).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        ref = transformers.HubertModel.from_pretrained(d, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    n, length = int(args.short * 24000), int(args.long * 24000)
    x, m = torch.zeros(2, length), torch.zeros(2, length, dtype=torch.long)
    x[0], m[0] = 0.1 * torch.randn(length, generator=g), 1
    x[1, :n], m[1, :n] = 0.1 * torch.randn(n, generator=g), 1
    with torch.no_grad():
        alone = ref(x[1:, :n], output_hidden_states=True).hidden_states
        runs = {
            "mert (ours)": ours(input_values=x, attention_mask=m, output_hidden_states=True).hidden_states,
            "HubertModel": ref(input_values=x, attention_mask=m, output_hidden_states=True).hidden_states,
        }
    t = alone[0].shape[1]
    layers = len(alone) - (1 if ours.config.do_stable_layer_norm else 0)  # transformers 5's last pre-LN state
    print(f"{args.preset}: a {args.short:g} s clip padded to {args.long:g} s with attention_mask, vs HubertModel on "
          f"the clip alone ({layers} hidden states, {t} valid frames)")  # fmt: skip
    print(f"{'model':<14} {'rel L2 min':>11} {'rel L2 max':>11} {'max abs':>10}")
    for name, states in runs.items():
        rel = [((states[i][1, :t] - alone[i][0]).norm() / alone[i][0].norm()).item() for i in range(layers)]
        err = max((states[i][1, :t] - alone[i][0]).abs().max().item() for i in range(layers))
        print(f"{name:<14} {min(rel):>11.2e} {max(rel):>11.2e} {err:>10.2e}")


if __name__ == "__main__":
    main()
