"""The flow-guidance widget: guide the rectified-flow prior towards "no nodule" around chosen points.

A cube is cut around each patch centre (each point of a Points layer, or the viewer's current
position) at the prior's patch size and isotropic spacing; it keeps its own geometry (a
:class:`~wsnodule_core.io.volume.Volume` with its origin and the CT's direction), so every result
overlays the CT exactly. :func:`~wsnodule_core.flow.guidance.guide` takes the patches through the
frozen prior while the predictor steers the first K return steps; the widget shows, tied to the CT
layer picked at Run, per patch: the counterfactual (HU), the difference ``|x - x_cf|`` (HU,
additive heat map), the return-path trajectory (a 4D image whose leading axis is the integration
step, t0 -> 0) and the thresholded difference as a new Labels layer (never over an older one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QLabel,
                            QLineEdit, QPushButton, QSpinBox, QWidget)

from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry, mask_volume, volume_of_layer
from napari_wsnodule._layers import GENERATED_KEY, SOURCE_KEY, add_volume_layer, unique_layer_name
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import LayerPicker, WsnoduleWidget, device_picker
from napari_wsnodule.widgets._staged import StagedSteps
from napari_wsnodule.widgets._view import camera_of, row_of
from wsnodule_core.errors import FlowProtocolError, PatchCentreError, WsnoduleError
from wsnodule_core.io.volume import Volume
from wsnodule_core.training.checkpoint import BEST, LAST
from wsnodule_core.training.device import DeviceChoice, choose_device

AIR_HU = -1024.0          # outside the CT (as flow/patches.py cuts its patches)
PATCH_KEY = "wsnodule_patch"   # metadata of the 4D trajectory layer: the patch Volume of its spatial axes
TIMES_KEY = "wsnodule_times"   # metadata of the trajectory layer: the time of each state
TIME_AXIS_LABEL = "guidance step (t0 → 0)"
NO_CT = "Open a CT first (File > Open, or the Load CT widget), then press Run."
NO_PRIOR = ("No flow prior is loaded: give its checkpoint (last.pt of `python -m "
            "wsnodule_core.flow.train_prior`, or the run folder) under 'Prior' and press Load, then press "
            "Run again.")
NO_PREDICTOR = ("No patch predictor is loaded: give its checkpoint (best.pt / last.pt of train_predictor, or "
                "the run folder) under 'Predictor' and press Load, then press Run again.")


# --- models ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedPrior:
    model: Any                # VelocityUNet (EMA weights, eval mode) on device.device
    config: Any               # PriorTrainConfig: patch, spacing_mm, hu_window, intensity_range, to_hu
    device: DeviceChoice
    path: Path


@dataclass(frozen=True, eq=False)
class LoadedPredictor:
    model: Any                # PredictorModule, eval mode
    patch_config: Any         # PatchConfig it was trained on, or None when the checkpoint does not say
    device: DeviceChoice
    path: Path


def load_flow_prior(path: Path, device: DeviceChoice) -> LoadedPrior:
    from wsnodule_core.flow.train_prior import load_prior

    model, config = load_prior(path, device.device)
    path = Path(path)
    if path.is_dir():  # the file load_checkpoint read
        path = path / BEST if (path / BEST).exists() else path / LAST
    return LoadedPrior(model, config, device, path)


def load_flow_predictor(path: Path, device: DeviceChoice) -> LoadedPredictor:
    from wsnodule_core.flow.patches import PatchConfig
    from wsnodule_core.flow.predictors import load_predictor

    model, checkpoint = load_predictor(path, device.device)
    raw = checkpoint.raw.get("patch_config")
    patch_config = PatchConfig(**{k: v for k, v in raw.items() if k in PatchConfig.__dataclass_fields__}) \
        if isinstance(raw, dict) else None
    return LoadedPredictor(model, patch_config, device, Path(checkpoint.path))


def describe_prior(prior: LoadedPrior) -> str:
    c = prior.config
    spacing = f"{c.spacing_mm:g} mm" if c.spacing_mm else "the scans' own spacing"
    low, high = _bounds(c)
    return (f"{prior.path.name}: {c.patch}³ voxels at {spacing}, HU [{c.hu_window[0]:g}, "
            f"{c.hu_window[1]:g}] → [{low:g}, {high:g}], on {prior.device.device}")


def describe_predictor(predictor: LoadedPredictor) -> str:
    p = predictor.patch_config
    if p is None:
        return f"{predictor.path.name}: patch protocol not recorded, on {predictor.device.device}"
    return (f"{predictor.path.name}: {p.size}³ voxels at {p.spacing_mm:g} mm, HU [{p.window[0]:g}, "
            f"{p.window[1]:g}] → [0, 1], on {predictor.device.device}")


def _bounds(prior_config: Any) -> tuple[float, float]:
    from wsnodule_core.flow.train_prior import INTENSITY_RANGES

    return INTENSITY_RANGES[prior_config.intensity_range]


def patch_protocol(prior_config: Any, patch_config: Any) -> tuple[int, float]:
    """``(size, spacing_mm)`` of the guidance patches; :class:`FlowProtocolError` when the predictor was
    trained on other patches than the prior (it sees the prior's clean estimates as they are)."""
    size = int(prior_config.patch)
    spacing = prior_config.spacing_mm
    fix = ("Load a predictor trained on the prior's patches (train_predictor with PatchConfig(size={s}, "
           "spacing_mm={m})) or a prior trained on the predictor's.")
    if prior_config.intensity_range != "unit":
        raise FlowProtocolError(
            f"the prior works in the {prior_config.intensity_range!r} range {_bounds(prior_config)}, the "
            "patch predictors take [0, 1]; load a prior trained with intensity_range='unit'.")
    if patch_config is not None:
        if int(patch_config.size) != size:
            raise FlowProtocolError(f"the prior makes {size}³ patches, the predictor was trained on "
                                    f"{patch_config.size}³. " + fix.format(s=size, m=spacing))
        if spacing is not None and abs(float(patch_config.spacing_mm) - float(spacing)) > 1e-6:
            raise FlowProtocolError(f"the prior's patches are at {spacing:g} mm, the predictor's at "
                                    f"{patch_config.spacing_mm:g} mm. " + fix.format(s=size, m=spacing))
        if tuple(float(w) for w in patch_config.window) != tuple(float(w) for w in prior_config.hu_window):
            raise FlowProtocolError(f"the prior maps HU {tuple(prior_config.hu_window)} to its range, the "
                                    f"predictor HU {tuple(patch_config.window)}. "
                                    + fix.format(s=size, m=spacing))
        if spacing is None:  # a prior trained on native grids: cut at the predictor's spacing
            spacing = float(patch_config.spacing_mm)
    if spacing is None:
        from wsnodule_core.flow.patches import PatchConfig

        spacing = PatchConfig().spacing_mm
    return size, float(spacing)


# --- patch centres and patches ---------------------------------------------------------------------


def points_world_xyz(layer: Any) -> np.ndarray:
    """The points of a Points layer as world ``(x, y, z)`` mm (LPS), ``(n, 3)``."""
    data = np.asarray(layer.data, float)
    if data.ndim != 2 or data.shape[1] < 3:
        raise PatchCentreError(
            f"the points layer {layer.name!r} has {data.shape[1] if data.ndim == 2 else '?'} dimensions; "
            "patch centres need 3D points: add a Points layer while the CT is shown (or pick '(none)' to use "
            "the viewer's position).")
    world = np.array([np.asarray(layer.data_to_world(p), float)[-3:] for p in data]).reshape(-1, 3)
    return world[:, ::-1]  # napari world (z, y, x) -> LPS (x, y, z)


def viewer_centre_xyz(viewer: napari.Viewer) -> np.ndarray:
    """The viewer's current position as world ``(x, y, z)`` mm: the sliders' point on the hidden axes,
    the camera centre on the displayed ones (the CT's axes are the viewer's last three)."""
    point = np.asarray(viewer.dims.point, float)
    centre = np.asarray(camera_of(viewer).center, float)
    displayed = list(viewer.dims.displayed)
    for axis, value in zip(displayed, centre[-len(displayed):]):
        point[axis] = value
    if len(point) < 3:
        raise PatchCentreError("the viewer shows fewer than three axes; open a 3D CT first.")
    return point[-3:][::-1]


def check_inside(volume: Volume, centres_xyz: np.ndarray, name: str) -> None:
    """:class:`PatchCentreError` for a centre outside the CT's voxels."""
    for i, centre in enumerate(np.asarray(centres_xyz, float).reshape(-1, 3)):
        index = volume.world_to_index(centre)
        if np.any(index < -0.5) or np.any(index > np.asarray(volume.shape) - 0.5):
            which = f"point {i + 1}" if len(centres_xyz) > 1 else "the patch centre"
            raise PatchCentreError(
                f"{which} (x, y, z = {', '.join(f'{v:.1f}' for v in centre)} mm) lies outside {name!r} "
                f"(voxel {', '.join(f'{v:.1f}' for v in index)} of {volume.shape}): move the point, or the "
                "viewer's slider and view, onto the CT.")


def cut_patch(volume: Volume, centre_xyz: Sequence[float], size: int, spacing_mm: float, *,
              fill: float = AIR_HU, interpolator: str = "linear") -> Volume:
    """An isotropic cube of ``size`` voxels at ``spacing_mm`` whose voxel ``size // 2`` lies on the
    world point, with the CT's direction: first cropped on the CT's own grid (cheap), then resampled."""
    from wsnodule_core.data.luna16 import extract_patch

    # the cube has the CT's direction, so a crop of its extent plus a margin for interpolation holds it
    box = np.ceil(size * spacing_mm / np.asarray(volume.spacing)).astype(int) + 4
    local = extract_patch(volume, centre_xyz, size_vox=box, fill=fill)
    return extract_patch(local, centre_xyz, size_vox=int(size), spacing=float(spacing_mm), fill=fill,
                         interpolator=interpolator)  # type: ignore[arg-type]


def trajectory_geometry(patch: Volume) -> dict[str, Any]:
    """Layer keywords of a (time, z, y, x) image: the patch's geometry on the spatial axes, the time
    axis in steps (world value k = state k)."""
    spatial = layer_geometry(patch)
    if "scale" in spatial:
        return {"scale": (1.0, *spatial["scale"]), "translate": (0.0, *spatial["translate"])}
    affine = np.eye(5)
    affine[1:4, 1:4] = spatial["affine"][:3, :3]
    affine[1:4, 4] = spatial["affine"][:3, 3]
    return {"affine": affine}


# --- what the task hands back ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FlowRun:
    """One guidance run on the CT layer ``source``: per patch i, arrays on ``patches[i]``'s grid."""

    source: Any
    centres_xyz: np.ndarray         # (B, 3) world mm
    patches: list[Volume]           # the input patches, HU, each with its geometry
    counterfactual: np.ndarray      # (B, s, s, s) HU
    difference: np.ndarray          # (B, s, s, s) HU: |reference - counterfactual|
    trajectory: np.ndarray          # (B, n_steps + 1, s, s, s) HU, t0 down to 0
    times: tuple[float, ...]
    masks: np.ndarray               # (B, s, s, s) bool
    p_before: np.ndarray
    p_after: np.ndarray
    config: Any                     # GuidanceConfig
    device: str


class FlowGuidanceWidget(WsnoduleWidget):
    """Guide the flow prior with a patch predictor around points of a CT and show what changed."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.prior: LoadedPrior | None = None
        self.predictor: LoadedPredictor | None = None
        self.last_run: FlowRun | None = None
        self.last_layers: list[dict[str, Any]] = []
        self.last_error_text: str | None = None
        self._staged = StagedSteps(self._error, "the flow guidance results")
        layout = self.layout()
        layout.addWidget(self._inputs_box())
        layout.addWidget(self._models_box())
        layout.addWidget(self._guidance_box())
        layout.addWidget(self._mask_box())
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start_guidance)
        layout.addWidget(self.run_button)
        layout.addWidget(self.tasks)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        layout.addStretch(1)
        self._rule_changed()

    # --- layout -----------------------------------------------------------------------------

    def _inputs_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = self.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units.")
        self.points_combo = LayerPicker(self.viewer, (napari.layers.Points,), allow_none=True)
        self.points_combo.setToolTip("One patch around each point (batched). '(none)': one patch around the "
                                     "viewer's current position (slice and view centre).")
        self.lungs_combo = self.labels_picker(allow_none=True)
        self.lungs_combo.setToolTip("Optional lung mask on the CT's grid: the mask is kept inside it. "
                                    "'(none)': the whole patch counts.")
        form.addRow("CT", self.image_combo)
        form.addRow("Patch centres", self.points_combo)
        form.addRow("Lungs", self.lungs_combo)
        return box

    def _models_box(self) -> QGroupBox:
        box = QGroupBox("Models")
        form = QFormLayout(box)
        self.device_combo, self.device_label = device_picker()
        self.prior_edit = QLineEdit()
        self.prior_edit.setPlaceholderText("last.pt of the flow prior, or its run folder")
        self.prior_browse = QPushButton("Browse…")
        self.prior_browse.clicked.connect(lambda: self._browse(self.prior_edit, "Flow prior checkpoint"))
        self.prior_load_button = QPushButton("Load")
        self.prior_load_button.clicked.connect(self.load_prior_checkpoint)
        self.predictor_edit = QLineEdit()
        self.predictor_edit.setPlaceholderText("best.pt / last.pt of the patch predictor, or its run folder")
        self.predictor_browse = QPushButton("Browse…")
        self.predictor_browse.clicked.connect(
            lambda: self._browse(self.predictor_edit, "Predictor checkpoint"))
        self.predictor_load_button = QPushButton("Load")
        self.predictor_load_button.clicked.connect(self.load_predictor_checkpoint)
        self.models_label = QLabel("No prior, no predictor loaded.")
        self.models_label.setWordWrap(True)
        form.addRow("Run on", self.device_combo)
        form.addRow(self.device_label)
        form.addRow("Prior", row_of(self.prior_edit, self.prior_browse, self.prior_load_button))
        form.addRow("Predictor",
                    row_of(self.predictor_edit, self.predictor_browse, self.predictor_load_button))
        form.addRow(self.models_label)
        return box

    def _guidance_box(self) -> QGroupBox:
        from wsnodule_core.flow.guidance import (METHODS, NORMALISATIONS, REFERENCES, RULES, STARTS,
                                                 GuidanceConfig)

        d = GuidanceConfig()
        box = QGroupBox("Guidance")
        form = QFormLayout(box)
        self.t0_spin = _double(0.01, 1.0, d.t0, 2, 0.05)
        self.t0_spin.setToolTip("Start time of the return path (0 clean, 1 noise): larger lets guidance "
                                "change more and reconstructs less faithfully.")
        self.start_combo = _combo(STARTS, d.start)
        self.start_combo.setToolTip("invert: deterministic ODE inversion to t0 (the unguided path gives the "
                                    "CT back); noise: (1 - t0) x + t0 eps with seeded noise.")
        self.steps_spin = _int(1, 1000, d.n_steps)
        self.steps_spin.setToolTip("Integration steps t0 → 0 (the trajectory has steps + 1 states).")
        self.method_combo = _combo(METHODS, d.method)
        self.guided_spin = _int(0, 1000, d.guided_steps)
        self.guided_spin.setToolTip("K: the first K return steps are guided (0: no guidance).")
        self.rule_combo = _combo(RULES, d.rule)
        self.rule_combo.setToolTip("dps: gradient through the velocity network; x0: gradient at the clean "
                                   "estimate only (cheaper).")
        self.scale_spin = _double(0.0, 1000.0, d.scale, 3, 0.1)
        self.scale_spin.setToolTip("Step size of each guided update (with l2: the L2 length of the change "
                                   "per patch and step, in the prior's intensity units); 0: no guidance.")
        self.normalise_combo = _combo(NORMALISATIONS, d.normalise)
        self.reference_combo = _combo(REFERENCES, d.reference)
        self.reference_combo.setToolTip("input: |x - x_cf| (the paper's map); unguided: against the same "
                                        "start integrated back without guidance (use it with the noise "
                                        "start).")
        self.seed_spin = _int(0, 2**31 - 1, d.seed)
        self.amp_check = QCheckBox("Mixed precision (CUDA only)")
        self.amp_check.setChecked(d.amp)
        self.amp_check.setToolTip("Run both networks under float16 autocast on a CUDA GPU (faster, less "
                                  "memory); ignored on the CPU.")
        form.addRow("t0", self.t0_spin)
        form.addRow("Start", self.start_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Integrator", self.method_combo)
        form.addRow("Guided steps (K)", self.guided_spin)
        form.addRow("Rule", self.rule_combo)
        form.addRow("Scale", self.scale_spin)
        form.addRow("Gradient normalisation", self.normalise_combo)
        form.addRow("Difference against", self.reference_combo)
        form.addRow("Noise seed", self.seed_spin)
        form.addRow(self.amp_check)
        return box

    def _mask_box(self) -> QGroupBox:
        from wsnodule_core.flow.attribution import RULES, ThresholdRule

        d = ThresholdRule()
        box = QGroupBox("Mask")
        form = QFormLayout(box)
        self.threshold_combo = _combo(RULES, d.kind)
        self.threshold_combo.setToolTip("fraction: >= value x the largest difference in the lungs; otsu: "
                                        "Otsu's threshold; top_percent: the value % of lung voxels that "
                                        "changed most.")
        self.threshold_combo.currentIndexChanged.connect(self._rule_changed)
        self.threshold_spin = _double(0.001, 1.0, d.value, 3, 0.05)
        self.floor_spin = _double(0.0, 2000.0, 0.0, 1, 5.0)
        self.floor_spin.setSuffix(" HU")
        self.floor_spin.setToolTip("Differences below this are ignored first, so reconstruction noise alone "
                                   "gives an empty mask (20 HU is a reasonable start).")
        form.addRow("Threshold rule", self.threshold_combo)
        form.addRow("Value", self.threshold_spin)
        form.addRow("Floor", self.floor_spin)
        return box

    def _rule_changed(self, *_: Any) -> None:
        kind = self.threshold_combo.currentData()
        self.threshold_spin.setEnabled(kind != "otsu")
        high = 100.0 if kind == "top_percent" else 1.0
        self.threshold_spin.setRange(0.001, high)
        self.threshold_spin.setSuffix(" %" if kind == "top_percent" else "")

    def _browse(self, edit: QLineEdit, title: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, title, edit.text() or str(Path.home()),
                                              "Checkpoints (*.pt);;All files (*)")
        if path:
            edit.setText(path)

    # --- device and models ----------------------------------------------------------------------

    def device_choice(self) -> DeviceChoice:
        return choose_device(self.device_combo.currentData())

    def _checkpoint_path(self, edit: QLineEdit, what: str) -> Path | None:
        text = edit.text().strip()
        if not text:
            self._error(f"Type or browse to the {what} checkpoint (a .pt file or its run folder), then press "
                        "Load.")
            return None
        path = Path(text).expanduser()
        if not path.exists():
            self._error(f"{path}: no such file or folder; give the {what} checkpoint written by its "
                        "training run.")
            return None
        return path

    def load_prior_checkpoint(self) -> None:
        """Load the prior in ``prior_edit`` onto the chosen device (in a worker)."""
        path = self._checkpoint_path(self.prior_edit, "flow prior")
        if path is None:
            return
        device = self.device_choice()

        def work(reporter: TaskReporter) -> LoadedPrior:
            reporter.stage(f"loading the prior {path.name}")
            return load_flow_prior(path, device)

        self.tasks.run("Loading the flow prior", work, self._prior_loaded)

    def load_predictor_checkpoint(self) -> None:
        """Load the predictor in ``predictor_edit`` onto the chosen device (in a worker)."""
        path = self._checkpoint_path(self.predictor_edit, "patch predictor")
        if path is None:
            return
        device = self.device_choice()

        def work(reporter: TaskReporter) -> LoadedPredictor:
            reporter.stage(f"loading the predictor {path.name}")
            return load_flow_predictor(path, device)

        self.tasks.run("Loading the patch predictor", work, self._predictor_loaded)

    def _prior_loaded(self, prior: LoadedPrior) -> None:
        self.prior = prior
        self._update_models_label()

    def _predictor_loaded(self, predictor: LoadedPredictor) -> None:
        self.predictor = predictor
        self._update_models_label()

    def _update_models_label(self) -> None:
        lines = [f"Prior: {describe_prior(self.prior)}" if self.prior else "Prior: not loaded",
                 f"Predictor: {describe_predictor(self.predictor)}" if self.predictor
                 else "Predictor: not loaded"]
        if self.prior is not None and self.predictor is not None:
            try:
                size, spacing = patch_protocol(self.prior.config, self.predictor.patch_config)
                lines.append(f"Patches: {size}³ voxels at {spacing:g} mm.")
            except FlowProtocolError as error:
                lines.append(f"⚠ {error}")
        self.models_label.setText("\n".join(lines))

    # --- configuration --------------------------------------------------------------------------

    def guidance_config(self) -> Any:
        """The guidance settings as a GuidanceConfig (clamp: the prior's intensity range)."""
        from wsnodule_core.flow.guidance import GuidanceConfig

        clamp = _bounds(self.prior.config) if self.prior is not None else (0.0, 1.0)
        return GuidanceConfig(
            t0=float(self.t0_spin.value()), start=str(self.start_combo.currentData()),
            n_steps=int(self.steps_spin.value()), method=str(self.method_combo.currentData()),
            guided_steps=int(self.guided_spin.value()), rule=str(self.rule_combo.currentData()),
            scale=float(self.scale_spin.value()), normalise=str(self.normalise_combo.currentData()),
            reference=str(self.reference_combo.currentData()), seed=int(self.seed_spin.value()), clamp=clamp,
            amp=self.amp_check.isChecked())

    def threshold_rule(self) -> Any:
        from wsnodule_core.flow.attribution import ThresholdRule

        return ThresholdRule(str(self.threshold_combo.currentData()), float(self.threshold_spin.value()))

    def patch_centres(self, volume: Volume, name: str) -> np.ndarray:
        """World ``(x, y, z)`` of the patch centres: the chosen points, else the viewer's position."""
        points = self.points_combo.layer()
        if points is None:
            centres = viewer_centre_xyz(self.viewer)[None]
        else:
            centres = points_world_xyz(points)
            if not len(centres):
                raise PatchCentreError(f"the points layer {points.name!r} has no points: add a point on each "
                                       "nodule to guide, or pick '(none)' to use the viewer's position.")
        check_inside(volume, centres, name)
        return centres

    # --- the task ---------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self.last_error_text = text
        show_error(text)

    @property
    def showing(self) -> bool:
        """True while the layers of a finished run are still being added."""
        return self._staged.busy

    def start_guidance(self) -> None:
        source = self.image_combo.layer()
        if source is None:
            self._error(NO_CT)
            return
        if self.prior is None:
            self._error(NO_PRIOR)
            return
        if self.predictor is None:
            self._error(NO_PREDICTOR)
            return
        if self.showing:
            show_info("The previous results are still being added to the viewer; press Run again in a "
                      "moment.")
            return
        prior, predictor = self.prior, self.predictor
        lungs_layer = self.lungs_combo.layer()
        try:
            size, spacing = patch_protocol(prior.config, predictor.patch_config)
            config = self.guidance_config()
            rule = self.threshold_rule()
            volume = volume_of_layer(source)
            centres = self.patch_centres(volume, source.name)
            lungs = None
            if lungs_layer is not None:
                lungs = mask_volume((np.asarray(lungs_layer.data) > 0).astype(np.uint8), volume)
        except WsnoduleError as error:
            self._error(f"Cannot run the guidance on {source.name!r}: {error}")
            return
        low, high = prior.config.hu_window
        a, b = _bounds(prior.config)
        floor = float(self.floor_spin.value()) / (high - low) * (b - a)  # HU -> the prior's intensity units
        hu_per_unit = (high - low) / (b - a)

        def work(reporter: TaskReporter) -> FlowRun:
            import torch

            from wsnodule_core.flow.guidance import difference_mask, guide

            reporter.stage(f"cutting {len(centres)} patch(es) of {size}³ voxels at {spacing:g} mm")
            patches = [cut_patch(volume, c, size, spacing) for c in centres]
            lung_crops = None if lungs is None else np.stack(
                [cut_patch(lungs, c, size, spacing, fill=0, interpolator="nearest").array > 0
                 for c in centres])
            reporter.raise_if_cancelled()
            device = next(prior.model.parameters()).device
            net = predictor.model
            if next(net.parameters(), None) is not None and next(net.parameters()).device != device:
                net = net.to(device)
            hu = np.stack([np.asarray(p.array, np.float32) for p in patches])
            x = torch.from_numpy(np.asarray(prior.config.to_model(hu), np.float32))[:, None].to(device)
            result = guide(prior.model, net, x, config, keep_trajectory=True, cancel=reporter.cancelled,
                           progress=reporter.progress_fn("guidance: integration steps"))
            masks = difference_mask(result.difference, lung_crops, rule, floor=floor)
            to_hu = prior.config.to_hu
            states = torch.stack(result.trajectory.states, dim=1)[:, :, 0]  # (B, T, s, s, s)
            return FlowRun(source, centres, patches,
                           np.asarray(to_hu(result.counterfactual[:, 0].numpy()), np.float32),
                           (result.difference[:, 0].numpy() * hu_per_unit).astype(np.float32),
                           np.asarray(to_hu(states.float().numpy()), np.float32),
                           tuple(result.trajectory.times), np.asarray(masks, bool),
                           result.p_before.numpy(), result.p_after.numpy(), config, str(device))

        self.tasks.run(f"Flow guidance on {source.name}", work, self.show_run)

    # --- results ----------------------------------------------------------------------------

    def show_run(self, run: FlowRun) -> None:
        """Put a finished run into the viewer, one layer per event-loop turn (short pause between)."""
        base = run.source.name
        n = len(run.patches)
        limits = _limits_of(run.source)
        steps: list = []
        for i, patch in enumerate(run.patches):
            tag = f" #{i + 1}" if n > 1 else ""
            cf, diff = patch.with_array(run.counterfactual[i]), patch.with_array(run.difference[i])
            top = float(run.difference[i].max())
            steps += [
                (i, "counterfactual", _bind(self._image, cf, f"{base}: flow counterfactual{tag}", run.source,
                                            "flow:counterfactual", colormap="gray", contrast_limits=limits)),
                (i, "difference", _bind(self._image, diff, f"{base}: flow difference{tag}", run.source,
                                        "flow:difference", colormap="inferno", blending="additive",
                                        opacity=0.7, contrast_limits=(0.0, top if top > 0 else 1.0))),
                (i, "trajectory", _bind(self._trajectory, run, i, f"{base}: flow trajectory{tag}", limits)),
                # the mask is a result to correct: always a new layer
                (i, "mask", _bind(add_volume_layer, self.viewer,
                                  patch.with_array(run.masks[i].astype(np.int32)), "labels",
                                  f"{base}: flow mask{tag}", source=run.source, generated="flow:mask")),
            ]
        self._staged.start([((i, key), make) for i, key, make in steps],
                           lambda made: self._shown(run, _per_patch(made, len(run.patches))))

    def _shown(self, run: FlowRun, layers: list[dict[str, Any]]) -> None:
        self.last_run, self.last_layers = run, layers
        lines = []
        for i, patch in enumerate(run.patches):
            voxels = int(run.masks[i].sum())
            ml = voxels * patch.voxel_volume_mm3 / 1000.0
            where = ", ".join(f"{v:.1f}" for v in run.centres_xyz[i])
            lines.append(f"Patch {i + 1} at ({where}) mm: P(nodule) {run.p_before[i]:.3f} → "
                         f"{run.p_after[i]:.3f}; mask {voxels} voxels ({ml:.2f} mL) in "
                         f"'{layers[i]['mask'].name}'.")
        c = run.config
        lines.append(f"{c.n_steps} steps from t0 = {c.t0:g}, K = {c.guided_steps} guided ({c.rule}), on "
                     f"{run.device}.")
        self.summary_label.setText("\n".join(lines))
        show_info(f"Flow guidance on {run.source.name}: P(nodule) "
                  + ", ".join(f"{a:.2f} → {b:.2f}" for a, b in zip(run.p_before, run.p_after)))

    def _find(self, generated: str, source: Any, patch: Volume, shape: tuple) -> Any:
        """The image layer made earlier for this source, purpose and patch grid (refreshed in place)."""
        for layer in self.viewer.layers:
            meta = getattr(layer, "metadata", {})
            shown = meta.get(PATCH_KEY, meta.get(VOLUME_KEY))
            if (isinstance(layer, napari.layers.Image) and meta.get(GENERATED_KEY) == generated
                    and meta.get(SOURCE_KEY) is source and isinstance(shown, Volume)
                    and shown.same_geometry(patch) and tuple(layer.data.shape) == tuple(shape)):
                return layer
        return None

    def _image(self, volume: Volume, name: str, source: Any, generated: str, **kwargs: Any) -> Any:
        layer = self._find(generated, source, volume, volume.shape)
        if layer is not None:
            layer.data = volume.array
            layer.metadata[VOLUME_KEY] = volume
        else:
            layer = add_volume_layer(self.viewer, volume, "image", name, source=source, generated=generated,
                                     **kwargs)
        if "contrast_limits" in kwargs:
            layer.contrast_limits_range = kwargs["contrast_limits"]
            layer.contrast_limits = kwargs["contrast_limits"]
        return layer

    def _trajectory(self, run: FlowRun, i: int, name: str, limits: tuple[float, float]) -> Any:
        patch, data = run.patches[i], run.trajectory[i]
        metadata = {PATCH_KEY: patch, TIMES_KEY: run.times, SOURCE_KEY: run.source,
                    GENERATED_KEY: "flow:trajectory"}
        layer = self._find("flow:trajectory", run.source, patch, data.shape)
        if layer is not None:
            layer.data = data
            layer.metadata.update(metadata)
            return layer
        n = len(run.times) - 1
        name = f"{name} (steps 0–{n}: t {run.times[0]:g} → 0)"
        layer = self.viewer.add_image(data, name=unique_layer_name(self.viewer, name), metadata=metadata,
                                      colormap="gray", contrast_limits=limits, visible=False,
                                      **trajectory_geometry(patch))
        self._label_time_axis(layer)
        return layer

    def _label_time_axis(self, layer: Any) -> None:
        """Name the viewer axis of the trajectory's leading (time) axis, unless the user named it."""
        dims = self.viewer.dims
        axis = dims.ndim - layer.ndim
        labels = list(dims.axis_labels)
        if 0 <= axis < len(labels) and re.fullmatch(r"-?\d+", str(labels[axis])):
            labels[axis] = TIME_AXIS_LABEL
            dims.axis_labels = labels


def _limits_of(layer: Any) -> tuple[float, float]:
    limits = tuple(float(v) for v in getattr(layer, "contrast_limits", (-1000.0, 400.0)))
    return limits if limits[1] > limits[0] else (-1000.0, 400.0)


def _bind(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: fn(*args, **kwargs)


def _combo(values: Sequence[str], current: str) -> QComboBox:
    combo = QComboBox()
    for value in values:
        combo.addItem(value, value)
    combo.setCurrentIndex(list(values).index(current))
    return combo


def _int(low: int, high: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _double(low: float, high: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def _per_patch(made: dict, n: int) -> list[dict[str, Any]]:
    """``{(patch, key): layer}`` -> one ``{key: layer}`` per patch."""
    layers: list[dict[str, Any]] = [{} for _ in range(n)]
    for (i, key), layer in made.items():
        layers[i][key] = layer
    return layers
