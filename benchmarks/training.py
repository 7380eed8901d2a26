"""Time of each step of the luminosity training (issue 6: < 10 min on 2 cores).

Runs the training half of the ``luminosity`` stage (networks (a) and (b), the
binary-cleaning iterations, the emcee noise models) on a products directory that has
gone through ``photometry``, writes the model files there, and prints the seconds of
each step, the cores and torch threads used, and the machine's load (the cores are
shared: a busy machine stretches every number):

    obpipe simulate --out /tmp/dr5.zarr
    obpipe run /tmp/dr5.zarr --out /tmp/dr5_prod --stages index,normalize,pca,emission,photometry
    python benchmarks/training.py --survey /tmp/dr5.zarr --products /tmp/dr5_prod [--cores 2]

``--paper`` times the paper's recipe instead (one network per model, squared error on
M_Ks_geo, good parallaxes only) on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--survey", required=True)
    ap.add_argument("--products", required=True, help="products dir through 'photometry'")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores to run on")
    ap.add_argument("--paper", action="store_true", help="the paper's recipe")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cpus = sorted(os.sched_getaffinity(0))[:args.cores]
    os.sched_setaffinity(0, cpus)

    import torch

    from obpipe.luminosity import stage as lum
    from obpipe.pipeline import RunContext

    opts: dict = {}
    if args.paper:
        opts = {"network": {"n_members": 1, "loss": "mag", "feature_scale_power": 1.0}}
    ctx = RunContext(args.survey, args.products, scheduler="threads", force=True)
    cfg, extra = lum._config(ctx, opts)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rep = lum.train_from_products(ctx, cfg, extra["extra_training"])
    total = time.perf_counter() - t0
    steps = {"read_inputs": rep["timing_s"].get("read_inputs")}
    for it in rep["iterations"]:
        for m in ("a", "b"):
            steps[f"iteration_{it['iteration']}_network_{m}"] = it.get(f"train_seconds_{m}")
            steps[f"iteration_{it['iteration']}_network_{m}_epochs"] = it.get(f"epochs_{m}")
    steps["mcmc_noise_models"] = rep["timing_s"].get("mcmc")
    steps["training_and_cleaning"] = rep["timing_s"].get("training")
    out = {"cores": cpus, "torch_threads_training": cfg.network.n_threads,
           "torch_default_threads": torch.get_num_threads(),
           "load_average_1min_start_end": [load0, os.getloadavg()[0]],
           "recipe": "paper" if args.paper else "default", "seconds": steps,
           "seconds_total": total, "target_seconds": 600,
           "noise": {m: v["mean"] for m, v in rep["noise"].items()}}
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
