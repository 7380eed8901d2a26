"""Cost and accuracy of the luminosity stage (issue 6): networks, noise model, binaries.

Throughput (no survey needed):

* training time per epoch of the eq. (6) network (3,053 inputs, model (a)) on
  ``--train-rows`` synthetic spectra, torch on the CPU with ``--threads`` threads;
  the same for the 100-PCA-coefficient variant;
* inference spectra/s of the numpy forward pass used on the workers
  (``luminosity_block`` on a chunk of ``--infer-rows`` spectra).

Accuracy (``--survey PATH --products DIR``, products through ``photometry``): copies
nothing; runs ``luminosity`` and ``binary`` with ``force`` into ``DIR`` (``--variant
pca_coeff`` for the coefficient network) and prints the timing of each step and
``luminosity_metrics`` as JSON, next to the paper's numbers (sigma_int = 0.25 mag,
sigma_s100 = 0.10 mag).

    python benchmarks/luminosity.py                       # throughput only
    python benchmarks/luminosity.py --skip-throughput --trained-inference demo/products
    obpipe simulate --out /tmp/dr5.zarr --n-stars 16002 --seed 42 --overwrite
    (run stages index..photometry into /tmp/dr5_prod)
    python benchmarks/luminosity.py --survey /tmp/dr5.zarr --products /tmp/dr5_prod \\
        --skip-throughput
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

PAPER = {"sigma_int_mag": 0.25, "sigma_s100_mag": 0.10, "binary_fraction": 0.100,
         "unclassified_fraction": 0.072}


def throughput(train_rows: int, infer_rows: int, threads: int, epochs: int) -> dict:
    import os
    import tempfile

    import torch

    from obpipe.luminosity.network import wavelength_mask
    from obpipe.luminosity.network_training import TrainConfig, train_network
    from obpipe.stages.luminosity import luminosity_block

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_pix = 3909
    x = (1.0 + 0.05 * rng.standard_normal((train_rows, n_pix))).astype(np.float32)
    y = x[:, 1000:1100].mean(axis=1) * 10
    out: dict = {"threads": threads, "train_rows": train_rows}
    cfg = TrainConfig(max_epochs=epochs, patience=10 * epochs, loss="mag")
    net, hist = train_network(x, y, kind="a", config=cfg)
    out["seconds_per_epoch_recon_flux"] = hist.seconds_per_epoch
    out["n_inputs_recon_flux"] = int(wavelength_mask("a").sum())
    coef = rng.standard_normal((train_rows, 100)).astype(np.float32)
    _, hist_c = train_network(coef, coef[:, 0], kind="a", input_kind="pca_coeff", config=cfg)
    out["seconds_per_epoch_pca_coeff"] = hist_c.seconds_per_epoch
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for m in ("a", "b"):
            p = os.path.join(tmp, f"{m}.pt")
            if m == "b":
                net, _ = train_network(x[:200], y[:200], kind="b",
                                       config=TrainConfig(max_epochs=1, loss="mag"))
            net.save(p)
            paths.append((m, p))
        xi = (1.0 + 0.05 * rng.standard_normal((infer_rows, n_pix))).astype(np.float32)
        inputs = {"recon_flux": xi, "em_flag": (rng.random(infer_rows) < 0.13).astype(np.int8),
                  "quality_flags": np.zeros(infer_rows, np.int16),
                  "snr_g": np.full(infer_rows, 80.0)}
        kw = {"model_paths": tuple(paths), "sigmas": (("a", 0.25, 0.1), ("b", 0.35, 0.1)),
              "input_kind": "recon_flux"}
        luminosity_block(inputs, **kw)  # warm the model cache
        t0 = time.perf_counter()
        luminosity_block(inputs, **kw)
        dt = time.perf_counter() - t0
    out["inference_spectra_per_s_one_thread"] = infer_rows / dt
    out["inference_spectra_per_s_est_cores"] = threads * infer_rows / dt
    return out


def trained_inference(products: str, rows: int) -> dict:
    """Spectra/s of ``luminosity_block`` (one thread, as on a worker) with the trained
    models of ``products`` on its first ``rows`` spectra (real reconstructions)."""
    from obpipe.engine.blockwise import open_products
    from obpipe.luminosity import noise_model
    from obpipe.stages import luminosity as lum

    prods = open_products(products)
    rows = min(rows, prods.sizes["spec"])
    inputs = {k: prods[k][:rows].values for k in ("recon_flux", "pca_coeff", "em_flag",
                                                    "quality_flags")}
    inputs["snr_g"] = np.full(rows, 80.0)
    noise = {m: noise_model.NoiseModelResult.load(p) for m, p in lum._noise_paths(products).items()}
    kw = {"model_paths": tuple(sorted(lum._model_paths(products).items())),
          "sigmas": lum.noise_sigmas(noise),
          "input_kind": "recon_flux", "products_dir": products}
    lum.luminosity_block(inputs, **kw)  # warm the model cache
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        lum.luminosity_block(inputs, **kw)
        best = min(best, time.perf_counter() - t0)
    return {"rows": rows, "spectra_per_s_one_thread": rows / best,
            "spectra_per_s_two_workers_est": 2 * rows / best}


def accuracy(survey: str, products: str, variant: str) -> dict:
    from obpipe.config import config_from_dict
    from obpipe.engine.blockwise import open_products
    from obpipe.io import store
    from obpipe.pipeline import RunContext
    from obpipe.stages import luminosity as lum

    ctx = RunContext(survey, products, scheduler="threads", force=True,
                     config=config_from_dict({"luminosity": {"input_kind": variant}}))
    t0 = time.perf_counter()
    rep = lum.run(ctx)
    t_lum = time.perf_counter() - t0
    t0 = time.perf_counter()
    from obpipe.stages import binary as binary_stage

    binary_stage.run(ctx)
    t_bin = time.perf_counter() - t0
    from obpipe.validate import luminosity_metrics

    m = luminosity_metrics(store.open_cube(survey), open_products(products).load(),
                               store.open_truth(survey).load())
    return {"variant": variant, "seconds_luminosity_stage": t_lum,
            "seconds_training_steps": rep.get("training_seconds"),
            "seconds_inference": rep.get("inference_seconds"),
            "seconds_binary_stage": t_bin, "paper": PAPER, "metrics": m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=6000)
    ap.add_argument("--infer-rows", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--survey")
    ap.add_argument("--products")
    ap.add_argument("--variant", default="recon_flux", choices=("recon_flux", "pca_coeff"))
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--trained-inference", metavar="PRODUCTS",
                    help="also time inference with the trained models of PRODUCTS (after "
                    "a run through 'luminosity', e.g. demo/products)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out: dict = {}
    if not args.skip_throughput:
        out["throughput"] = throughput(args.train_rows, args.infer_rows, args.threads,
                                       args.epochs)
    if args.trained_inference:
        out["trained_inference"] = trained_inference(args.trained_inference, args.infer_rows)
    if args.survey:
        if not args.products:
            ap.error("--survey needs --products (a products dir through 'photometry')")
        out["accuracy"] = accuracy(args.survey, args.products, args.variant)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
