"""``wsnodule segment``: segment the nodules of one CT with a NAM checkpoint (NAM/R-NAM)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from wsnodule_core.cli.progress import TextProgress

MAP_NAMES = ("nam", "multi_nam", "probability", "scope", "candidates", "coarse", "fine")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="Segment the nodules of a CT volume with a trained NAM or PW4MedSeg checkpoint.",
        description=(
            "Read IMAGE (DICOM folder or file, NIfTI, NRRD or MetaImage), segment its lungs, run the "
            "NAM/R-NAM segmentation of a trained checkpoint (or K passes of a PW4MedSeg one) and write the "
            "nodule label mask (one label "
            "per 3D nodule) on the image's own grid. MASK may end in .nii.gz, .nii, .nrrd, .mhd or "
            ".mha, or .dcm for a DICOM-SEG (only when IMAGE is a DICOM series)."
        ),
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="the CT to segment")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT",
                        help="NAM or PW4MedSeg checkpoint (best.pt/last.pt of `wsnodule train`, or its run folder)")
    parser.add_argument("--output", required=True, type=Path, metavar="MASK", help="mask file to write")
    parser.add_argument("--multi-gap-checkpoint", type=Path, metavar="CKPT2",
                        help="a 2-/3-GAP checkpoint whose NAM narrows the screening scope (the paper's "
                             "multi-GAP segmentation; CKPT should then be a 1-GAP model)")
    parser.add_argument("--mode", choices=("fine", "coarse"), default="fine",
                        help="which mask to write: R-NAM fine (default) or coarse")
    parser.add_argument("--two-nodules", action="store_true",
                        help="segment the top two activation blobs per slice (the paper's two-nodule mode)")
    parser.add_argument("--maps", type=Path, metavar="DIR",
                        help="also write the NAM, multi-GAP NAM, slice probability, scope, candidates, "
                             "coarse and fine masks (NIfTI, image geometry) and rnam_scores.json here")
    parser.add_argument("--passes", type=int, default=6,
                        help="PW4MedSeg checkpoints: stochastic passes averaged (the paper: 6)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace MASK and the maps if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse existing outputs (and a DICOM-SEG for a non-DICOM image) before any work is done."""
    from wsnodule_core.errors import OutputExistsError
    from wsnodule_core.io.formats import require_format
    from wsnodule_core.io.writers import check_output_path

    output = check_output_path(args.output, args.overwrite)
    if output.suffix.lower() != ".dcm":
        require_format(output, "write")
    if args.maps is not None:
        existing = [args.maps / f"{n}.nii.gz" for n in (*MAP_NAMES, "uncertainty")] + [args.maps / "rnam_scores.json"]
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
    """The intermediate maps of a :class:`NamSegmentation` as NIfTI on ``volume``'s grid, and
    ``rnam_scores.json`` (per nodule slice: probability, candidates with area and score, chosen)."""
    from wsnodule_core.io import write_mask, write_volume
    from wsnodule_core.reports import to_json

    folder.mkdir(parents=True, exist_ok=True)
    prob = np.broadcast_to(result.probability.astype(np.float32)[:, None, None], volume.shape).copy()
    floats = {"nam": result.nam, "multi_nam": result.multi_nam, "probability": volume.with_array(prob)}
    written = []
    for name, vol in floats.items():
        if vol is not None:
            array = np.asarray(vol.array, np.float32)
            written.append(write_volume(volume.with_array(array), folder / f"{name}.nii.gz",
                                        overwrite=overwrite))
    for name in ("scope", "candidates", "coarse", "fine"):
        written.append(write_mask(getattr(result, name), volume, folder / f"{name}.nii.gz",
                                  overwrite=overwrite))
    scores = {
        "probability_threshold": result.config.probability_threshold,
        "slice_probability": result.probability,
        "nodule_slices": [
            {"z": s.z, "probability": s.probability, "chosen": list(s.chosen),
             "candidates": [{"label": c.label, "area_px": c.area_px, "score": c.score} for c in s.candidates]}
            for s in result.slices
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


def run(args: argparse.Namespace) -> int:
    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.evaluation import nam_config_from_checkpoint
    from wsnodule_core.io import read_volume
    from wsnodule_core.nam.pipeline import segment_volume
    from wsnodule_core.training.checkpoint import load_checkpoint, load_classifier
    from wsnodule_core.training.device import choose_device

    _check_outputs(args)
    choice = choose_device(args.device)
    print(choice.describe())
    bar = (lambda label: None) if args.quiet else TextProgress
    if load_checkpoint(args.checkpoint).kind == "pw4medseg":
        return run_pw4medseg(args, choice.device, bar)
    model, checkpoint = load_classifier(args.checkpoint, choice.device)
    multi = None
    if args.multi_gap_checkpoint is not None:
        multi, _ = load_classifier(args.multi_gap_checkpoint, choice.device)
    volume = read_volume(args.image)
    _check_dicom_seg(args.output, volume)
    lungs = segment_lungs(volume, progress=bar("lungs")).lungs
    config = nam_config_from_checkpoint(checkpoint, top_k=2 if args.two_nodules else 1)
    result = segment_volume(model, volume, lungs=lungs, config=config, multi_gap_model=multi,
                            progress=bar("NAM/R-NAM"))
    mask = result.fine if args.mode == "fine" else result.coarse
    if args.output.suffix.lower() == ".dcm" and not mask.array.any():
        print(f"no nodule found: a DICOM-SEG needs at least one segment, so {args.output} was not written "
              "(write .nii.gz to get an empty mask)")
    else:
        path = _write_output(mask, volume, args.output, args.overwrite)
        print(f"wrote {args.mode} mask: {path}")
    if args.maps is not None:
        write_maps(result, volume, args.maps, args.overwrite)
        print(f"wrote maps: {args.maps}")
    nodules = nodule_summary(mask.array, volume.spacing)
    n_slices = int(result.is_nodule.sum())
    print(f"{n_slices} of {volume.shape[0]} slice(s) classified as nodule slices; {len(nodules)} nodule(s)")
    if nodules:
        print("label  volume_mm3  diameter_mm  slices")
        for row in nodules:
            print(f"{row['label']:>5}  {row['volume_mm3']:>10.1f}  {row['diameter_mm']:>11.1f}  "
                  f"{row['slices'][0]}-{row['slices'][1]}")
    sys.stdout.flush()
    return 0


def run_pw4medseg(args: argparse.Namespace, device, bar) -> int:
    """A PW4MedSeg checkpoint: K stochastic passes; the mask (one label per connected nodule) and, with
    ``--maps``, the mean probability and the uncertainty (spread of the passes) on the image's grid."""
    from scipy import ndimage

    from wsnodule_core.io import read_volume, write_volume
    from wsnodule_core.pw4medseg.infer import predict_volume
    from wsnodule_core.pw4medseg.config import load_pw4medseg

    model, config = load_pw4medseg(args.checkpoint, device)
    volume = read_volume(args.image)
    _check_dicom_seg(args.output, volume)
    prediction = predict_volume(model, volume, config, passes=args.passes, device=device, seed=0,
                                progress=bar(f"PW4MedSeg, {args.passes} passes"))
    labels, n = ndimage.label(prediction.mask.array > 0, structure=np.ones((3, 3, 3)))
    mask = volume.with_array(labels.astype(np.int32))
    if args.output.suffix.lower() == ".dcm" and n == 0:
        print(f"no nodule found: a DICOM-SEG needs at least one segment, so {args.output} was not written")
    else:
        print(f"wrote mask: {_write_output(mask, volume, args.output, args.overwrite)}")
    if args.maps is not None:
        args.maps.mkdir(parents=True, exist_ok=True)
        for name in ("probability", "uncertainty"):
            write_volume(getattr(prediction, name), args.maps / f"{name}.nii.gz", overwrite=args.overwrite)
        print(f"wrote maps: {args.maps}")
    for row in nodule_summary(labels, volume.spacing):
        print(f"nodule {row['label']}: {row['volume_mm3']:.1f} mm3, {row['diameter_mm']:.1f} mm, slices "
              f"{row['slices'][0]}-{row['slices'][1]}")
    sys.stdout.flush()
    return 0
