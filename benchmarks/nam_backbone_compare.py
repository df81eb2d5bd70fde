"""NAM on the LiteMedSAM encoder (frozen, head only) against the narrow VGG16 NAM, trained the same way on a
balanced sample of a real VOI set's slices and scored on its val split only (issue 15, item 3).

    WSNODULE_DATA=/work/shared/data python benchmarks/nam_backbone_compare.py VOI_SET N_TRAIN N_VAL PIXEL_MM OUT

VOI_SET: a `wsnodule data lidc-vois` folder; N_TRAIN / N_VAL slices drawn half with a nodule, half
without; PIXEL_MM: the slices' pixel spacing (64-px crops); OUT: run folders and the embedding cache.
The "last" AUC is the fair figure (the "best" one is picked over epochs on the same val split).
"""
import sys, time
import numpy as np, torch
from wsnodule_core.data.slices import slices_from_dataset
from wsnodule_core.nam.train import train_classifier
from wsnodule_core.nam.train_config import TrainConfig
torch.set_num_threads(2)
data, n_train, n_val, spacing, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
base = TrainConfig(image_size=64, pixel_spacing_mm=spacing)
sc = base.slice_config()
def sample(split, n, seed):
    s = slices_from_dataset(data, split, sc)
    rng = np.random.default_rng(seed)
    idx = np.r_[rng.permutation(np.flatnonzero(s.labels == 1))[: n // 2], rng.permutation(np.flatnonzero(s.labels == 0))[: n // 2]]
    print(split, len(s), "slices,", s.n_positive, "pos; sampled", len(idx), flush=True)
    return s.subset(idx)
t = time.time(); train, val = sample("train", n_train, 0), sample("val", n_val, 1); print("slices", time.time() - t, flush=True)
for name, cfg in reversed([("vgg-narrow", TrainConfig(width="narrow", image_size=64, pixel_spacing_mm=spacing, batch_size=16, epochs=10, max_steps_per_epoch=10, device="cpu", select_metric="auc")),
                  ("lite_medsam", TrainConfig(backbone="lite_medsam", image_size=64, pixel_spacing_mm=spacing, batch_size=16, epochs=10, max_steps_per_epoch=10, device="cpu", lr=1e-3, select_metric="auc", embedding_cache=f"{out}/cache"))]):
    t = time.time()
    r = train_classifier((train, val), f"{out}/run-{name}", cfg, overwrite=True, log=lambda s: print(s, flush=True))
    h = r.history
    best = max(h, key=lambda m: m.get("val_auc", 0))
    print(f"RESULT {name}: {time.time()-t:.0f}s best val_auc {best['val_auc']:.3f} (epoch {best['epoch']}), bal_acc {best['val_balanced_accuracy']:.3f}, tuned {best['val_tuned_balanced_accuracy']:.3f}; last val_auc {h[-1]['val_auc']:.3f}", flush=True)
