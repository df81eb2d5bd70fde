"""``run_demo``: the demo's two parts, one report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsnodule_core import __version__
from wsnodule_core.demo.common import Progress, write_text
from wsnodule_core.demo.phantom import PhantomPart, run_phantom
from wsnodule_core.demo.real import RealPart, run_real
from wsnodule_core.errors import ModelConfigError, OutputExistsError
from wsnodule_core.reports import to_json
from wsnodule_core.shipped import SHIPPED, Registry


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote: the folder, metrics.json's document and each part (None when skipped)."""

    out_dir: Path
    metrics: dict[str, Any]
    real: RealPart | None = None
    phantom: PhantomPart | None = None

    @property
    def table(self) -> str:
        """Each part's table, titled."""
        parts = [("Real CT (LIDC-IDRI-0001 crop)", self.real), ("Phantom test split (NAM trained here)", self.phantom)]
        return "\n".join(f"{title}:\n{part.table}" for title, part in parts if part is not None)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds files unless ``overwrite``."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already holds files; the demo will not overwrite them. Choose an empty or new "
            "folder with --out, or pass --overwrite to replace the demo's files there."
        )


def run_demo(
    out_dir: str | Path,
    *,
    real: bool = True,
    training: bool = True,
    recipe: str = "cpu_demo",
    n_cases: int | None = None,
    size: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    max_steps_per_epoch: int | None = None,
    device: str = "auto",
    lite_medsam: Any = None,
    cache_dir: str | Path | None = None,
    registry: Registry = SHIPPED,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir``: metrics.json, report.md and each part's files.

    Parameters
    ----------
    real
        The real part (:func:`~wsnodule_core.demo.real.run_real`): the shipped LIDC-IDRI-0001 crop
        segmented by the shipped default model, the blob filter and ``medsam-box`` (box from the reader
        label), scored against the label. ``device``, ``lite_medsam``, ``cache_dir`` and ``registry`` go there.
    training
        The training part (:func:`~wsnodule_core.demo.phantom.run_phantom`): NAM trained from slice
        labels on a phantom set and evaluated on its test split. ``recipe``, ``n_cases``, ``size``,
        ``seed``, ``epochs`` and ``max_steps_per_epoch`` go there.
    overwrite
        Write into a folder that holds files, replacing the demo's own files.
    progress
        ``progress(stage, done, total)`` for each stage.
    """
    if not (real or training):
        raise ModelConfigError("both parts of the demo are skipped: drop --skip-real or --skip-training.")
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"wsnodule_version": __version__, "seconds": {}}
    real_part = phantom_part = None
    if real:
        start = time.monotonic()
        real_part = run_real(out, device=device, lite_medsam=lite_medsam, cache_dir=cache_dir, registry=registry,
                             overwrite=overwrite, progress=progress)
        metrics["real"] = real_part.metrics
        metrics["seconds"]["real"] = time.monotonic() - start
    if training:
        start = time.monotonic()
        phantom_part = run_phantom(out, recipe=recipe, n_cases=n_cases, size=size, seed=seed, epochs=epochs,
                                   max_steps_per_epoch=max_steps_per_epoch, overwrite=overwrite,
                                   progress=progress)
        metrics["phantom"] = phantom_part.metrics
        metrics["seconds"]["phantom"] = time.monotonic() - start
    to_json(metrics, out / "metrics.json", overwrite=overwrite)
    write_text(out / "report.md", _report(metrics, real_part, phantom_part), overwrite)
    return DemoResult(out, metrics, real_part, phantom_part)


def _report(metrics: dict[str, Any], real: RealPart | None, phantom: PhantomPart | None) -> str:
    seconds = metrics["seconds"]
    timing = ", ".join(f"{name} part {value / 60:.1f} min" for name, value in seconds.items())
    parts = [part.report for part in (real, phantom) if part is not None]
    return (f"# wsnodule demo report\n\nwsnodule {metrics['wsnodule_version']}; {timing}. Every number "
            "below is also in `metrics.json`.\n\n" + "\n".join(parts))
