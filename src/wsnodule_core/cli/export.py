"""``wsnodule export MASK --out OUT``: an (edited) nodule mask as annotators hand it on, one label map with one
id per nodule and the nodule table as CSV beside it (:mod:`wsnodule_core.data.annotation_export`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="Write a nodule mask as one label map (one id per nodule) and a per-nodule CSV table.",
        description=(
            "Read MASK (binary or labelled; NIfTI, NRRD, MetaImage), number its nodules 1..N (26-connected "
            "components, or one per label value with --by labels; in the order of their first voxel: slice, "
            "row, column) and write the label map to OUT with the geometry of --ct (or of MASK) and the table "
            "beside it (OUT's name with .csv): id, centre in world mm (patient LPS), equivalent and longest "
            "axial diameter, volume, voxels, slices, source method, edited. OUT may end in .nii.gz, .nii, "
            ".nrrd, .mhd, .mha, or .dcm for a DICOM-SEG (with --ct a DICOM series)."),
    )
    parser.add_argument("mask", type=Path, metavar="MASK", help="the (edited) nodule mask")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT", help="label map to write (CSV beside it)")
    parser.add_argument("--ct", type=Path, metavar="CT",
                        help="the CT the mask was drawn on: MASK must lie on its grid; its geometry is written")
    parser.add_argument("--series-uid", metavar="UID", default=None,
                        help="the SeriesInstanceUID to read when the DICOM folder CT holds several series")
    parser.add_argument("--model-mask", type=Path, metavar="MODEL",
                        help="the model's unedited mask on the same grid: a nodule whose voxels differ from it "
                             "is 'edited' (default: edited is 'unknown', or --edited)")
    parser.add_argument("--edited", choices=("yes", "no"), default=None,
                        help="mark every nodule as edited or not (instead of --model-mask)")
    parser.add_argument("--method", default="", metavar="TEXT",
                        help="the method that made the mask, written in the table (e.g. blob-refine, manual)")
    parser.add_argument("--by", choices=("components", "labels"), default="components",
                        help="a nodule is a 26-connected component (default) or one label value")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT and its CSV if they exist")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsnodule_core.data.annotation_export import annotation_export, table_path, write_annotation_export
    from wsnodule_core.errors import InvalidVolumeError
    from wsnodule_core.io import read_volume
    from wsnodule_core.io.volume import check_same_grid
    from wsnodule_core.io.writers import check_not_input, check_output_path

    if args.edited is not None and args.model_mask is not None:
        raise InvalidVolumeError("give --edited or --model-mask, not both.")
    inputs = [p for p in (args.mask, args.ct, args.model_mask) if p is not None]
    for path in (args.out, table_path(args.out)):  # before any reading
        check_output_path(path, args.overwrite)
        check_not_input(path, inputs)
    mask = read_volume(args.mask)
    reference = mask
    if args.ct is not None:
        reference = read_volume(args.ct, series_uid=args.series_uid)
        check_same_grid(mask, reference, f"the mask {args.mask}")
    model = None
    if args.model_mask is not None:
        model = read_volume(args.model_mask)
        check_same_grid(model, reference, f"the model mask {args.model_mask}")
    on_grid = reference.with_array(mask.array)
    edited = None if args.edited is None else args.edited == "yes"
    export = annotation_export(on_grid, source_method=args.method, edited=edited,
                               model_mask=None if model is None else model.array, by=args.by)
    written, csv_path = write_annotation_export(export.labels, export.rows, args.out, overwrite=args.overwrite,
                                                inputs=inputs)
    print(f"wrote {written} ({len(export.rows)} nodule(s)) and {csv_path}")
    for row in export.rows:
        x, y, z = row.centre_xyz_mm
        edited_text = {True: "edited", False: "not edited", None: "edited unknown"}[row.edited]
        print(f"  {row.id}: centre ({x:.1f}, {y:.1f}, {z:.1f}) mm, {row.equivalent_diameter_mm:.1f} mm eq. diameter, "
              f"{row.volume_mm3:.0f} mm^3, {edited_text}")
    return 0
