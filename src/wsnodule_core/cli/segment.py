"""``wsnodule segment``: segment the nodules of one CT with a shipped model (the default, or ``--method``)
or any trained checkpoint (through :func:`wsnodule_core.segmentation.load_segmenter`, as the evaluation,
the demo and the plugin do)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsnodule_core.cli.progress import TextProgress
from wsnodule_core.shipped.registry import SHIPPED, Registry, ShippedModel

# every map any segmenter may write with --maps (NAM: nam, multi_nam, scope, candidates and the slice
# probability; PW4MedSeg: probability, uncertainty; U-Net: probability), plus the masks
MAP_NAMES = ("nam", "multi_nam", "probability", "uncertainty", "scope", "candidates", "response", "difference",
             "candidate_probability", "coarse", "fine")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="Segment the nodules of a CT volume with a shipped model (default: "
                        f"{SHIPPED.default}) or a trained checkpoint (NAM, 3D NAM, U-Net, PW4MedSeg, flow guidance).",
        description=(
            "Read IMAGE (DICOM folder or file, NIfTI, NRRD or MetaImage), segment its lungs where the model "
            "needs them, segment its nodules and write the nodule label mask (one label per 3D nodule) on the "
            "image's own grid. Without --checkpoint a model shipped in the package segments: the default "
            f"({SHIPPED.default}) or --method NAME (`wsnodule models` lists them). With --checkpoint, the "
            "checkpoint's segmentation runs with the settings it was trained and validated with (NAM/R-NAM, "
            "the 3D NAM, the U-Net baseline, K passes of PW4MedSeg, or flow guidance at candidate centres); "
            "--method may then name the shipped model of the same method, whose kind the checkpoint must have. "
            "MASK may end in .nii.gz, .nii, .nrrd, .mhd or "
            ".mha, or .dcm for a DICOM-SEG (only when IMAGE is a DICOM series)."
        ),
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="the CT to segment")
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="a checkpoint (best.pt/last.pt of `wsnodule train`, or its run folder); default: "
                             "the shipped model of --method")
    parser.add_argument("--method", metavar="NAME",
                        help=f"a shipped model: {', '.join(SHIPPED.names())} (default {SHIPPED.default}; "
                             "`wsnodule models` lists them with their cards)")
    parser.add_argument("--output", required=True, type=Path, metavar="MASK", help="mask file to write")
    parser.add_argument("--box", type=int, nargs=6, action="append", metavar=("Z0", "Y0", "X0", "Z1", "Y1", "X1"),
                        help="medsam-box: a nodule's voxel box, end exclusive, inside the image (repeatable)")
    parser.add_argument("--box-world", type=float, nargs=6, action="append",
                        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                        help="medsam-box: a nodule's box by two opposite corners in world mm (patient LPS, as "
                             "--centre); every voxel it overlaps, clipped to the image (repeatable)")
    parser.add_argument("--series-uid", metavar="UID", default=None,
                        help="the SeriesInstanceUID to read when the DICOM folder IMAGE holds several series")
    parser.add_argument("--multi-gap-checkpoint", type=Path, metavar="CKPT2",
                        help="a 2-/3-GAP checkpoint whose NAM narrows the screening scope (the paper's "
                             "multi-GAP segmentation; CKPT should then be a 1-GAP model)")
    parser.add_argument("--mode", choices=("fine", "coarse"), default="fine",
                        help="NAM: which mask to write, R-NAM fine (default) or coarse")
    parser.add_argument("--two-nodules", action="store_true",
                        help="NAM: segment the top two activation blobs per slice (the paper's two-nodule mode)")
    parser.add_argument("--maps", type=Path, metavar="DIR",
                        help="also write the method's maps here (NIfTI, image geometry): NAM: nam, multi_nam, "
                             "probability, scope, candidates, coarse, fine and rnam_scores.json; PW4MedSeg: "
                             "probability, uncertainty; U-Net: probability; flow guidance: difference; "
                             "blob-refine: response; blob-classify-refine: response, candidates, "
                             "candidate_probability")
    parser.add_argument("--passes", type=int, default=None,
                        help="PW4MedSeg: stochastic passes averaged (default 6, the paper's K)")
    parser.add_argument("--flow-prior", type=Path, metavar="PRIOR",
                        help="flow-guidance predictor checkpoints: the rectified-flow prior it guides")
    parser.add_argument("--centre", type=float, nargs=3, action="append", metavar=("X", "Y", "Z"),
                        help="flow guidance: a candidate centre in world mm (repeatable; default: the strongest "
                             "Hessian blobs in the lungs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace MASK and the maps if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class ModelChoice:
    """What segments: a checkpoint (``shipped``: the --method it was checked against, if any) or a shipped
    model; ``kind``: the checkpoint kind, or the training-free method's name."""

    kind: str
    checkpoint: Path | None = None
    shipped: ShippedModel | None = None
    default: bool = False

    def describe(self) -> str:
        if self.checkpoint is not None:
            checked = f", checked as --method {self.shipped.name}" if self.shipped is not None else ""
            return f"model: checkpoint {self.checkpoint} ({self.kind}{checked})"
        assert self.shipped is not None
        which = "shipped default" if self.default else "shipped"
        return f"model: {self.shipped.name} ({which}; {self.shipped.summary}; card {self.shipped.card})"

    @property
    def what(self) -> str:
        """The model as error messages name it."""
        if self.checkpoint is not None:
            return f"{self.checkpoint} holds a {self.kind!r} model, which"
        assert self.shipped is not None
        return f"--method {self.shipped.name}{' (the shipped default)' if self.default else ''}"


def choose_model(args: argparse.Namespace, registry: Registry = SHIPPED) -> ModelChoice:
    """The model ``args`` ask for: --checkpoint (its kind checked against --method when both are given),
    else the shipped --method, else the shipped default. Reads no weights."""
    from wsnodule_core.shipped.load import check_method_kind

    shipped = registry.get(args.method) if args.method is not None else None
    if args.checkpoint is not None:
        if shipped is not None and shipped.pipeline:  # the pipeline on this file
            check_method_kind(shipped, args.checkpoint)
            return ModelChoice(shipped.method, args.checkpoint, shipped)
        if shipped is not None:
            return ModelChoice(check_method_kind(shipped, args.checkpoint), args.checkpoint, shipped)
        from wsnodule_core.segmentation import checkpoint_kind

        return ModelChoice(checkpoint_kind(args.checkpoint), args.checkpoint)
    model = shipped if shipped is not None else registry.get(registry.default)
    if model.trained:
        from wsnodule_core.segmentation.load import method_kinds

        registry.checkpoint(model.name)  # a missing or altered file is refused before any work

        kind = model.method if model.pipeline else method_kinds()[model.method]
        return ModelChoice(kind, shipped=model, default=shipped is None)
    return ModelChoice(model.method, shipped=model, default=shipped is None)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse existing outputs (and a DICOM-SEG for a non-DICOM image) before any work is done."""
    from wsnodule_core.errors import OutputExistsError
    from wsnodule_core.io.formats import require_format
    from wsnodule_core.io.writers import check_not_input, check_output_path, check_writable_folder

    check_not_input(args.output, [args.image])
    output = check_output_path(args.output, args.overwrite)
    if output.suffix.lower() != ".dcm":
        require_format(output, "write")
    if args.maps is not None:
        check_writable_folder(args.maps, "--maps")
        existing = [args.maps / f"{n}.nii.gz" for n in (*MAP_NAMES, "uncertainty")] + [args.maps / "rnam_scores.json"]
        for path in existing:
            check_not_input(path, [args.image])
        taken = [p for p in existing if p.exists()]
        if taken and not args.overwrite:
            raise OutputExistsError(f"{taken[0]} already exists; choose another --maps folder or pass "
                                    "--overwrite.")


def _check_dicom_seg(path: Path, volume) -> None:
    from wsnodule_core.errors import NotDicomReferenceError

    if path.suffix.lower() == ".dcm" and not volume.metadata.dicom_files:
        raise NotDicomReferenceError(
            f"{path}: a DICOM-SEG needs a DICOM image to refer to, but the image was not read from "
            "DICOM; write .nii.gz, .nrrd or .mhd instead.")


def _write_output(mask, volume, path: Path, overwrite: bool) -> Path:
    from wsnodule_core.io import write_dicom_seg, write_mask

    if path.suffix.lower() == ".dcm":
        return write_dicom_seg(mask, volume, path, overwrite=overwrite)
    return write_mask(mask, volume, path, overwrite=overwrite)


def write_maps(result, volume, folder: Path, overwrite: bool = False) -> list[Path]:
    """The maps of a :class:`~wsnodule_core.segmentation.SegmentationResult` as NIfTI on ``volume``'s grid:
    float maps as float32, label maps and every output mask as they are; for NAM also the slice
    probability and ``rnam_scores.json`` (per nodule slice: probability, candidates with area and score,
    chosen)."""
    from wsnodule_core.io import write_mask, write_volume
    from wsnodule_core.reports import to_json

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    from wsnodule_core.nam.pipeline import NamSegmentation

    nam = result.details if isinstance(result.details, NamSegmentation) else None
    maps = dict(result.maps)
    if nam is not None:
        maps["probability"] = volume.with_array(
            np.broadcast_to(nam.probability.astype(np.float32)[:, None, None], volume.shape).copy())
    for name, vol in maps.items():
        array = np.asarray(vol.array)
        if np.issubdtype(array.dtype, np.floating):
            written.append(write_volume(volume.with_array(array.astype(np.float32)), folder / f"{name}.nii.gz",
                                        overwrite=overwrite))
        else:
            written.append(write_mask(vol, volume, folder / f"{name}.nii.gz", overwrite=overwrite))
    if set(result.outputs) != {"mask"}:
        for name, mask in result.outputs.items():
            written.append(write_mask(mask, volume, folder / f"{name}.nii.gz", overwrite=overwrite))
    if nam is not None:
        scores = {
            "probability_threshold": nam.config.probability_threshold,
            "slice_probability": nam.probability,
            "nodule_slices": [
                {"z": s.z, "probability": s.probability, "chosen": list(s.chosen),
                 "candidates": [{"label": c.label, "area_px": c.area_px, "score": c.score} for c in s.candidates]}
                for s in nam.slices
            ],
        }
        written.append(to_json(scores, folder / "rnam_scores.json", overwrite=overwrite))
    return written


def nodule_summary(labels, spacing) -> list[dict]:
    """Per label: voxels, volume (mm^3), equivalent sphere diameter (mm), first/last slice."""
    from scipy import ndimage

    from wsnodule_core.metrics import equivalent_diameter_3d

    array = np.asarray(labels)
    voxel = float(np.prod(spacing))
    rows = []
    for label, box in enumerate(ndimage.find_objects(array), start=1):
        if box is None:
            continue
        n = int(np.count_nonzero(array[box] == label))
        volume = n * voxel
        rows.append({"label": label, "voxels": n, "volume_mm3": volume,
                     "diameter_mm": equivalent_diameter_3d(volume),
                     "slices": (box[0].start, box[0].stop - 1)})
    return rows


def segmenter_options(kind: str, args: argparse.Namespace, what: str | None = None) -> dict:
    """The command line's method options that apply to a model of ``kind`` (a checkpoint kind, or
    ``"medsam-box"``/``"blob-refine"``), refusing the others; ``what`` names the model in the error."""
    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.segmentation.load import method_kinds

    kinds = method_kinds()
    given = {"--mode": args.mode != "fine", "--two-nodules": args.two_nodules,
             "--multi-gap-checkpoint": args.multi_gap_checkpoint is not None, "--passes": args.passes is not None,
             "--flow-prior": args.flow_prior is not None, "--centre": bool(args.centre),
             "--box": bool(args.box), "--box-world": bool(args.box_world), "--maps": args.maps is not None}
    allowed = {kinds["nam"]: {"--mode", "--two-nodules", "--multi-gap-checkpoint", "--maps"},
               kinds["pw4medseg"]: {"--passes", "--maps"},
               kinds["flow_predictor"]: {"--flow-prior", "--centre", "--maps"},
               "medsam-box": {"--box", "--box-world"}}.get(kind, {"--maps"})
    wrong = [flag for flag, set_ in given.items() if set_ and flag not in allowed]
    if wrong:
        what = what or f"{args.checkpoint} holds a {kind!r} model, which"
        raise ModelConfigError(f"{what} takes no {', '.join(wrong)}; drop it (NAM takes --mode, --two-nodules, "
                               "--multi-gap-checkpoint; PW4MedSeg takes --passes; a flow predictor --flow-prior "
                               "and --centre; --method medsam-box takes --box and --box-world and draws no "
                               "--maps).")
    if kind == "medsam-box" and not (args.box or args.box_world):
        from wsnodule_core.errors import PromptError

        raise PromptError(f"{what or '--method medsam-box'} segments inside boxes and none was given: add "
                          "--box Z0 Y0 X0 Z1 Y1 X1 (voxels, end exclusive) or --box-world X0 Y0 Z0 X1 Y1 Z1 (mm).")
    if kind == kinds["nam"]:
        return {"output": args.mode, **({"top_k": 2} if args.two_nodules else {})}
    if kind == kinds["pw4medseg"] and args.passes is not None:
        return {"passes": args.passes}
    if kind == kinds["flow_predictor"] and args.centre:
        return {"centres_xyz": [tuple(c) for c in args.centre]}
    return {}


def load_chosen(choice: ModelChoice, args: argparse.Namespace, device: str, options: dict[str, Any],
                registry: Registry = SHIPPED, lite_medsam: Any = None) -> Any:
    """The segmenter of ``choice`` with the command line's ``options`` (boxes already checked)."""
    if choice.shipped is not None and choice.shipped.pipeline:
        from wsnodule_core.foundation import EmbeddingCache
        from wsnodule_core.shipped.load import load_shipped

        return load_shipped(choice.shipped.name, device, registry=registry, lite_medsam=lite_medsam,
                            checkpoint=choice.checkpoint, cache=EmbeddingCache(), **options)
    if choice.checkpoint is not None:
        from wsnodule_core.segmentation import load_segmenter

        return load_segmenter(choice.checkpoint, device, multi_gap_checkpoint=args.multi_gap_checkpoint,
                              prior_checkpoint=args.flow_prior, **options)
    from wsnodule_core.shipped.load import load_shipped

    assert choice.shipped is not None
    if choice.shipped.trained:
        return load_shipped(choice.shipped.name, device, registry=registry,
                            multi_gap_checkpoint=args.multi_gap_checkpoint, prior_checkpoint=args.flow_prior,
                            **options)
    from wsnodule_core.foundation import EmbeddingCache

    return load_shipped(choice.shipped.name, device, registry=registry, lite_medsam=lite_medsam,
                        cache=EmbeddingCache(), **options)


def run(args: argparse.Namespace, registry: Registry = SHIPPED, lite_medsam: Any = None) -> int:
    """``wsnodule segment``; ``registry``: the shipped models' table, ``lite_medsam``: a loaded LiteMedSAM
    (tests pass their own; the command line uses the package's and loads the model)."""
    from wsnodule_core.io import read_volume
    from wsnodule_core.segmentation.spacing import check_segmentation_spacing, training_spacing
    from wsnodule_core.training.device import choose_device

    _check_outputs(args)
    choice = choose_model(args, registry)
    options = segmenter_options(choice.kind, args, choice.what)
    print(choice.describe())
    device = choose_device(args.device)
    print(device.describe())
    bar = (lambda label: None) if args.quiet else TextProgress
    volume = read_volume(args.image, series_uid=args.series_uid)
    checkpoint = choice.checkpoint
    if checkpoint is None and choice.shipped is not None and choice.shipped.trained:
        checkpoint = registry.checkpoint(choice.shipped.name)
    check_segmentation_spacing(volume, training_spacing(checkpoint) if checkpoint is not None else None)
    _check_dicom_seg(args.output, volume)
    if choice.kind == "medsam-box":
        from wsnodule_core.segmentation.medsam_box import prompt_boxes

        options["boxes_zyx"] = prompt_boxes(volume, args.box or (), args.box_world or ())
    segmenter = load_chosen(choice, args, str(device.device), options, registry, lite_medsam)
    lungs = None
    if segmenter.needs_lungs:
        from wsnodule_core.data.lung import segment_lungs

        lungs = segment_lungs(volume, progress=bar("lungs")).lungs
    result = segmenter.segment(volume, lungs=lungs, progress=bar(segmenter.name))
    mask = result.mask
    what = f"{args.mode} mask" if "fine" in result.outputs else "mask"
    if args.output.suffix.lower() == ".dcm" and not np.asarray(mask.array).any():
        print(f"no nodule found: a DICOM-SEG needs at least one segment, so {args.output} was not written "
              "(write .nii.gz to get an empty mask)")
    else:
        path = _write_output(mask, volume, args.output, args.overwrite)
        print(f"wrote {what}: {path}")
    if args.maps is not None:
        write_maps(result, volume, args.maps, args.overwrite)
        print(f"wrote maps: {args.maps}")
    nodules = nodule_summary(mask.array, volume.spacing)
    details = result.details
    if hasattr(details, "is_nodule"):
        print(f"{int(details.is_nodule.sum())} of {volume.shape[0]} slice(s) classified as nodule slices; "
              f"{len(nodules)} nodule(s)")
    else:
        print(f"{len(nodules)} nodule(s)")
    if nodules:
        print("label  volume_mm3  diameter_mm  slices")
        for row in nodules:
            print(f"{row['label']:>5}  {row['volume_mm3']:>10.1f}  {row['diameter_mm']:>11.1f}  "
                  f"{row['slices'][0]}-{row['slices'][1]}")
    sys.stdout.flush()
    return 0
