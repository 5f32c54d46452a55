"""Held-out check of the `smollm2` preset: a world it was not tuned on, taught to SmolLM2 the way
`demo-smollm2` was (a LoRA on the top 12 blocks, merged), then unlearned with the preset.

The preset's lr was chosen on `demo-smollm2` itself; this asks whether its alignment carries over to another
world. Teaching takes ~10 min on 2 CPU cores (cached in $ATWU_BENCH_CACHE), each job ~2.5 min.

    python bench/smollm2_heldout.py                      # generate_world(11), 20 people, 4 forget; atwu and wga
    python bench/smollm2_heldout.py --seed 13 --methods atwu,atwu-npo --set hidden_centre=true
"""

from __future__ import annotations

import argparse
import sys
import time

from common import quiet, smollm2_taught

from atwu_core.config import make_config, split_overrides
from atwu_core.data import load_dataset_dir
from atwu_core.job import run_job


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=11, help="generate_world seed (the demo world is seed 0)")
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--forget-people", type=int, default=4)
    ap.add_argument("--methods", default="atwu,wga")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a job setting or method parameter"
    )
    args = ap.parse_args(argv)
    quiet()
    job_overrides, params = split_overrides(args.set)
    loaded, data, _adapter = smollm2_taught(args.seed, args.people, args.forget_people)
    dataset = load_dataset_dir(data)
    for method in args.methods.split(","):
        start = time.perf_counter()
        run_dir = data.parent / f"run-{method}-{int(time.time())}"
        config = make_config(method, "smollm2", params, model=f"smollm2+seed{args.seed}", **job_overrides)
        m = run_job(config, loaded=loaded, dataset=dataset, run_dir=run_dir).metrics
        f, r = m.forget, m.retain
        print(
            f"{method}: AUROC {m.alignment.auroc:.3f} AUPRC {m.alignment.auprc:.3f} | forget exact "
            f"{f.before.exact:.2f} -> {f.after.exact:.3f}, ROUGE-L {f.after.rouge_l:.3f} | "
            f"retain exact {r.before.exact:.2f} -> {r.after.exact:.3f}, "
            f"ROUGE-L {r.after.rouge_l:.3f} | {time.perf_counter() - start:.0f} s ({run_dir})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
