"""Every parameter of the NAM/R-NAM segmentation, with its default (see ``docs/nam_segmentation.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.image.window import NAM_WINDOW
from wsnodule_core.nam.icm import IcmParams
from wsnodule_core.nam.rnam import FillParams
from wsnodule_core.nam.scope import MultiGapScopeParams, ScopeParams


@dataclass(frozen=True)
class NamConfig:
    """Parameters of :func:`~wsnodule_core.nam.pipeline.segment_volume` and ``segment_slice``.

    Attributes
    ----------
    window
        HU window mapped to [0, 1] for the network (the classifier's training window).
    input_size
        Side of the network input: the lung-centred crop when lungs are given (the paper: 384),
        else the whole slice is resized (bilinear) to ``input_size`` x ``input_size``.
    crop_pixel_spacing_mm
        Resample the lung crop in-plane to this spacing first (None: native spacing, as the paper).
    probability_threshold
        A slice is a "nodule slice" when P(nodule) >= this. :meth:`with_checkpoint_threshold` sets
        the one a training run chose on its validation slices.
    nam_branches
        Branches of ``model`` summed into its NAM (``"all"`` or indices, deepest first). With
        ``multi_gap_model`` the paper's 1-GAP NAM is ``(0,)`` of a 1-GAP model = ``"all"``.
    scope, multi_gap, icm, fill
        Parameters of the screening scope, of the multi-GAP scope combination, of the ICM
        segmentation and candidates, and of the candidate filling for R-NAMs.
    dense_min_hu
        Phases whose mean is at least this many HU are "denser than parenchyma" and give the
        candidates (the brightest phase always does); None: the ``icm.n_dense_phases`` brightest.
    icm_init
        ``"slice"``: k-means initialisation on the whole slice (the paper's "global intensity
        distribution"); ``"lung"``: on the lung mask only (needs ``lungs``; falls back to the slice).
    min_candidate_lung_fraction
        With lungs given, a candidate is kept only when at least this fraction of its pixels lies in
        the lung mask (our lung masks include juxtapleural nodules), so a scope spilling over the
        pleura cannot pick chest wall; 0 switches the filter off. Not in the paper: chosen after a
        CPU-scale run whose NAM scope picked chest wall (``docs/nam_results.md``).
    top_k
        Blobs segmented per slice: 1 (the paper) or 2 (two-nodule mode).
    second_blob_min_ratio
        In two-nodule mode, the second blob must have at least this fraction of the first's
        prominence.
    coarse_mode
        ``"all"``: the coarse mask is every candidate in the scope; ``"densest"``: only the
        candidate with the highest mean intensity.
    rnam_batch_size
        Masked images per forward pass in R-NAM screening.
    rnam
        True (the paper): the fine mask is the candidate R-NAM screening picks, one forward pass per
        candidate. False: each scope's candidate with the highest mean NAM is picked instead, with no
        further pass (not the paper; for an encoder that costs seconds per image on a CPU).
    lung_slices_only
        Classify only the slices whose lung mask (needs ``lungs``) is not empty; the others get
        probability 0 and no NAM (they hold no lung nodule; saves the encoder's passes on the neck
        and abdomen of a whole CT).
    max_kept_rnams
        At most this many R-NAM maps (float32 on the input slice grid) are kept in the result,
        in slice order; later candidates keep their score but not their map.
    bridge_gap
        When linking per-slice masks into 3D nodules, also join masks one empty slice apart.
    tile_size, tile_stride
        None (the paper): the whole lung crop is the network input. A side in pixels: the lung crop
        (``input_size`` px) is slid over by tiles of this side, every ``tile_stride`` pixels (None:
        half a tile), for a classifier trained on nodule-sized crops (:mod:`~wsnodule_core.nam.tiles`);
        needs lungs.
    """

    window: tuple[float, float] = NAM_WINDOW
    input_size: int = 384
    crop_pixel_spacing_mm: float | None = None
    probability_threshold: float = 0.5
    nam_branches: str | tuple[int, ...] = "all"
    scope: ScopeParams = field(default_factory=ScopeParams)
    multi_gap: MultiGapScopeParams = field(default_factory=MultiGapScopeParams)
    icm: IcmParams = field(default_factory=IcmParams)
    dense_min_hu: float | None = -500.0
    icm_init: str = "slice"
    min_candidate_lung_fraction: float = 0.5
    fill: FillParams = field(default_factory=FillParams)
    top_k: int = 1
    second_blob_min_ratio: float = 0.5
    coarse_mode: str = "all"
    rnam_batch_size: int = 16
    rnam: bool = True
    lung_slices_only: bool = False
    max_kept_rnams: int = 32
    bridge_gap: bool = True
    tile_size: int | None = None
    tile_stride: int | None = None

    def __post_init__(self) -> None:
        if self.window[1] <= self.window[0]:
            raise NamSegmentationError(
                f"NamConfig.window must be (low, high) with low < high, got {self.window}."
            )
        if not 0.0 <= self.probability_threshold <= 1.0:
            raise NamSegmentationError(
                f"NamConfig.probability_threshold must be in [0, 1], got {self.probability_threshold}."
            )
        if self.input_size < 32:
            raise NamSegmentationError(f"NamConfig.input_size must be >= 32 pixels, got {self.input_size}.")
        if self.icm_init not in ("slice", "lung"):
            raise NamSegmentationError(
                f"NamConfig.icm_init must be 'slice' or 'lung', got {self.icm_init!r}."
            )
        if self.coarse_mode not in ("all", "densest"):
            raise NamSegmentationError(
                f"NamConfig.coarse_mode must be 'all' or 'densest', got {self.coarse_mode!r}."
            )
        if not 0.0 <= self.min_candidate_lung_fraction <= 1.0:
            raise NamSegmentationError(
                "NamConfig.min_candidate_lung_fraction must be in [0, 1], got "
                f"{self.min_candidate_lung_fraction}."
            )
        if self.top_k not in (1, 2):
            raise NamSegmentationError(f"NamConfig.top_k must be 1 or 2 (two-nodule mode), got {self.top_k}.")
        if self.tile_size is not None and not 32 <= self.tile_size <= self.input_size:
            raise NamSegmentationError(
                f"NamConfig.tile_size must lie in [32, input_size = {self.input_size}] pixels (the classifier's "
                f"training crop inside the lung crop), got {self.tile_size}."
            )
        if self.tile_stride is not None and self.tile_stride < 1:
            raise NamSegmentationError(f"NamConfig.tile_stride must be >= 1 pixel, got {self.tile_stride}.")
        if self.rnam_batch_size < 1 or self.max_kept_rnams < 0:
            raise NamSegmentationError(
                "NamConfig: rnam_batch_size must be >= 1 and max_kept_rnams >= 0, got "
                f"{self.rnam_batch_size} and {self.max_kept_rnams}."
            )

    def with_checkpoint_threshold(self, checkpoint_path) -> "NamConfig":
        """A copy whose ``probability_threshold`` is the one recorded in a NAM training checkpoint
        (chosen on its validation slices); unchanged when the checkpoint records none (older
        checkpoints, runs without validation)."""
        from wsnodule_core.nam.train import checkpoint_threshold

        threshold = checkpoint_threshold(checkpoint_path)
        return self if threshold is None else replace(self, probability_threshold=threshold)

    def icm_params(self) -> IcmParams:
        """``icm`` with ``dense_min_hu`` turned into the window-normalised units ICM works in."""
        if self.dense_min_hu is None:
            return self.icm
        low, high = self.window
        return replace(self.icm, dense_min_mean=(float(self.dense_min_hu) - low) / (high - low))
