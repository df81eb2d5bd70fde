"""What every segmentation method gives back, and the one signature every method segments with.

A :class:`Segmenter` turns a CT :class:`~wsnodule_core.io.volume.Volume` into a
:class:`SegmentationResult`: a label mask on the CT's own grid (one label per nodule), every mask
the method makes (NAM: coarse and fine), and the intermediate maps a person looks at (NAM, scope,
probability, uncertainty, ...). :func:`~wsnodule_core.segmentation.load_segmenter` builds one from
any checkpoint, so the command line, the evaluation, the demo and the plugin segment alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import numpy as np

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.io.volume import Volume, check_mask_matches

LUNGS_AUTO = "auto"
Lungs = Union[np.ndarray, Volume, str, Any, None]  # Any: a LungSegmentation
Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """One CT segmented by one method; every Volume lies on the input CT's grid.

    ``mask`` is int32, 0 background and 1..n one label per nodule; ``outputs`` holds every mask the
    method makes by name (``mask`` is ``outputs[primary]``); ``maps`` the intermediate maps to show;
    ``lungs`` the lung mask used (None when the method used none); ``details`` the method's own
    result object (e.g. :class:`~wsnodule_core.nam.pipeline.NamSegmentation`) for what is method-specific.
    """

    mask: Volume
    outputs: Mapping[str, Volume]
    method: str
    maps: Mapping[str, Volume] = field(default_factory=dict)
    lungs: Volume | None = None
    details: Any = None

    @property
    def n_nodules(self) -> int:
        array = np.asarray(self.mask.array)
        return int(array.max()) if array.size else 0


class Segmenter(Protocol):
    """A segmentation method ready to run: ``name`` (its table row), ``kind`` (its checkpoint kind),
    ``needs_lungs`` (``lungs="auto"`` then segments them; give a lung mask to save that time)."""

    name: str
    kind: str
    needs_lungs: bool

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult: ...


def resolve_lungs(
    volume: Volume, lungs: Lungs, *, needed: bool, progress: Progress | None = None
) -> np.ndarray | None:
    """The lung mask a method runs with: ``"auto"`` segments the lungs when the method ``needed`` them,
    None means none, an array or Volume must lie on ``volume``'s grid."""
    if isinstance(lungs, str):
        if lungs != LUNGS_AUTO:
            raise ModelConfigError(
                f"lungs must be a mask on the CT's grid, None or {LUNGS_AUTO!r}, got {lungs!r}."
            )
        if not needed:
            return None
        from wsnodule_core.data.lung import segment_lungs

        return np.asarray(segment_lungs(volume, progress=progress).lungs, bool)
    if lungs is None:
        return None
    if hasattr(lungs, "lungs"):  # a LungSegmentation
        lungs = lungs.lungs
    return np.asarray(check_mask_matches(lungs, volume)) > 0


def labelled(volume: Volume, mask: np.ndarray | Volume) -> Volume:
    """``mask`` on ``volume``'s grid as int32 labels, one per 26-connected nodule (labels kept if given)."""
    from wsnodule_core.nodules import label_nodules

    array = np.asarray(mask.array if isinstance(mask, Volume) else mask)
    if array.dtype == bool or array.max(initial=0) <= 1:
        array = label_nodules(array > 0)
    return volume.with_array(array.astype(np.int32))


def single_output(
    volume: Volume,
    mask: np.ndarray | Volume,
    method: str,
    *,
    maps: Mapping[str, Volume] | None = None,
    lungs: np.ndarray | None = None,
    details: Any = None,
) -> SegmentationResult:
    """A result whose one output, ``"mask"``, is ``mask`` labelled per nodule; ``lungs`` the mask used."""
    labels = labelled(volume, mask)
    return SegmentationResult(labels, {"mask": labels}, method, dict(maps or {}), lung_volume(volume, lungs),
                              details)


def lung_volume(volume: Volume, lungs: np.ndarray | None) -> Volume | None:
    return None if lungs is None else volume.with_array(lungs.astype(np.uint8))


def check_options(options: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    """Refuse options a segmenter does not take, naming those it does."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = (f"its only option is {allowed[0]}" if len(allowed) == 1
                  else f"its options are {sorted(allowed)}")
        raise ModelConfigError(f"{what} segmentation has no option {unknown}; {listed}.")


@dataclass(frozen=True, eq=False)
class FunctionSegmenter:
    """Your own method as a :class:`Segmenter`: ``function(volume, lungs)`` returns a mask on the volume's
    grid (array or Volume) or ``{output name: mask}``; ``lungs`` is a boolean array or None."""

    name: str
    function: Callable[[Volume, np.ndarray | None], Any]
    kind: str = "function"
    needs_lungs: bool = False

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        lung_mask = resolve_lungs(volume, lungs, needed=self.needs_lungs)
        made = self.function(volume, lung_mask)
        outputs = {
            name: labelled(volume, mask)
            for name, mask in (made.items() if isinstance(made, Mapping) else [("mask", made)])
        }
        if not outputs:
            raise ModelConfigError(f"{self.name}: the function returned no mask.")
        primary = outputs.get("mask", outputs.get("fine", next(iter(outputs.values()))))
        return SegmentationResult(primary, outputs, self.name, {}, lung_volume(volume, lung_mask))
