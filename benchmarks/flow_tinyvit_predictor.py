"""The flow predictor on LiteMedSAM's frozen encoder (``tinyvit25d``, the rectified-flow paper's choice) against
the compact 3D CNN, trained on the same real VOI patches and scored on validation patients only (issue 15,
item 4): patch AUC / accuracy, and the attribution baselines' Dice on the validation nodule patches.

    WSNODULE_DATA=/work/shared/data python benchmarks/flow_tinyvit_predictor.py VOI_SET OUT \
        [--train 240] [--val 120] [--test 120] [--slab 1] [--epochs 20] [--tinyvit-lr 1e-3]
        [--predictors cnn3d tinyvit25d] [--eval-patches 30]

VOI_SET: a ``wsnodule data lidc-vois`` folder; patches 32^3 at 1.5 mm (the real benchmark's); --train /
--val / --test patches drawn half with a nodule, half without, from the train / val / test splits (by
patient; the settings are chosen on val, the test AUC is reported beside it). The encoder's slab
embeddings are cached in OUT/cache (a second run reads them). Results: docs/flow_predictors.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def balanced(patches, n: int, seed: int):
    rng = np.random.default_rng(seed)
    pos = rng.permutation(np.flatnonzero(patches.labels == 1))[: n // 2]
    neg = rng.permutation(np.flatnonzero(patches.labels == 0))[: n // 2]
    return patches.subset(np.sort(np.r_[pos, neg]))


def test_auc(model, test, config, out: Path) -> float:
    """ROC AUC of the last epoch's model on the test patches (tinyvit25d: through the embedding cache)."""
    from wsnodule_core.flow.predictors import EmbeddingPredictor, predict_patches
    from wsnodule_core.foundation import EmbeddingCache
    from wsnodule_core.metrics.classification import roc_auc

    if config.uses_cached_embeddings:
        import torch

        embeddings = model.net.embed_patches(test.images, cache=EmbeddingCache(out / "cache"))
        with torch.no_grad():
            p = torch.softmax(EmbeddingPredictor(model.net).eval()(embeddings), dim=1)[:, 1].numpy()
    else:
        p = predict_patches(model, test.images)
    return roc_auc(p, test.labels)


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.flow.evaluate import FlowEvalConfig, evaluate_patches, flow_table
    from wsnodule_core.flow.patches import PatchConfig, patches_from_dataset
    from wsnodule_core.flow.predictors import PredictorTrainConfig, train_predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vois", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=120)
    parser.add_argument("--test", type=int, default=120)
    parser.add_argument("--tinyvit-lr", type=float, default=1e-3)
    parser.add_argument("--predictors", nargs="+", default=["cnn3d", "tinyvit25d"])
    parser.add_argument("--slab", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--eval-patches", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    config = PatchConfig(size=32, spacing_mm=1.5)
    train = balanced(patches_from_dataset(args.vois, "train", config), args.train, 0)
    val = balanced(patches_from_dataset(args.vois, "val", config), args.val, 1)
    test = balanced(patches_from_dataset(args.vois, "test", config), args.test, 2)
    print(f"patches: train {train.n_positive}+{train.n_negative}, val {val.n_positive}+{val.n_negative} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    runs = {"cnn3d": PredictorTrainConfig("cnn3d", norm="batch", epochs=args.epochs, batch_size=8, device="cpu"),
            "tinyvit25d": PredictorTrainConfig("tinyvit25d", channels=(64,), slab=args.slab, dropout=0.2,
                                               epochs=args.epochs, batch_size=16, lr=args.tinyvit_lr, device="cpu",
                                               embedding_cache=str(args.out / "cache"))}
    models, lines = {}, []
    for name, run_config in ((n, c) for n, c in runs.items() if n in args.predictors):
        t = time.monotonic()
        result = train_predictor((train, val), args.out / name, run_config, overwrite=True,
                                 log=lambda s: print(s, flush=True))
        last, best = result.history[-1], max(result.history, key=lambda m: m["val_auc"])
        tested = test_auc(result.model, test, run_config, args.out)
        lines.append(f"| {name} | {last['val_auc']:.3f} | {last['val_accuracy']:.3f} | {best['val_auc']:.3f} "
                     f"(epoch {best['epoch']}) | {tested:.3f} | {time.monotonic() - t:.0f} s |")
        models[name] = result.model.eval()
        print(lines[-1], flush=True)
    t = time.monotonic()
    evaluation = evaluate_patches(val, models, None, FlowEvalConfig(baselines=("cam", "gradcam", "gradcampp"),
                                                                     max_patches=args.eval_patches),
                                  device="cpu")
    print("\n| predictor | val AUC (last epoch) | val accuracy | best val AUC | test AUC (last epoch) | train time |"
          "\n|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nattribution on {min(args.eval_patches, val.n_positive)} val nodule patches "
          f"({time.monotonic() - t:.0f} s):\n")
    print(flow_table(evaluation))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
