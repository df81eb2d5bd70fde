"""The flow widget's guidance panel: the settings of :class:`~wsnodule_core.flow.guidance.GuidanceConfig`."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QFormLayout

from napari_wsnodule.widgets._base import Panel, WsnoduleWidget
from napari_wsnodule.widgets._controls import double_spin, int_spin, value_combo


class GuidancePanel(Panel):
    """t0, start, steps, integrator, K, rule, scale, normalisation, reference, seed, mixed precision."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        from wsnodule_core.flow.guidance import (
            METHODS,
            NORMALISATIONS,
            REFERENCES,
            RULES,
            STARTS,
            GuidanceConfig,
        )

        super().__init__("Guidance", dock)
        d = GuidanceConfig()
        form = QFormLayout(self)
        self.t0_spin = double_spin(0.01, 1.0, d.t0, 2, 0.05)
        self.t0_spin.setToolTip("Start time of the return path (0 clean, 1 noise): larger lets guidance "
                                "change more and reconstructs less faithfully.")
        self.start_combo = value_combo(STARTS, d.start)
        self.start_combo.setToolTip("invert: deterministic ODE inversion to t0 (the unguided path gives the "
                                    "CT back); noise: (1 - t0) x + t0 eps with seeded noise.")
        self.steps_spin = int_spin(1, 1000, d.n_steps)
        self.steps_spin.setToolTip("Integration steps t0 → 0 (the trajectory has steps + 1 states).")
        self.method_combo = value_combo(METHODS, d.method)
        self.guided_spin = int_spin(0, 1000, d.guided_steps)
        self.guided_spin.setToolTip("K: the first K return steps are guided (0: no guidance).")
        self.rule_combo = value_combo(RULES, d.rule)
        self.rule_combo.setToolTip("dps: gradient through the velocity network; x0: gradient at the clean "
                                   "estimate only (cheaper).")
        self.scale_spin = double_spin(0.0, 1000.0, d.scale, 3, 0.1)
        self.scale_spin.setToolTip("Step size of each guided update (with l2: the L2 length of the change "
                                   "per patch and step, in the prior's intensity units); 0: no guidance.")
        self.normalise_combo = value_combo(NORMALISATIONS, d.normalise)
        self.reference_combo = value_combo(REFERENCES, d.reference)
        self.reference_combo.setToolTip("input: |x - x_cf| (the paper's map); unguided: against the same "
                                        "start integrated back without guidance (use it with the noise "
                                        "start).")
        self.seed_spin = int_spin(0, 2**31 - 1, d.seed)
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

    def config(self, clamp: tuple[float, float]) -> Any:
        """The settings as a GuidanceConfig (``clamp``: the prior's intensity range)."""
        from wsnodule_core.flow.guidance import GuidanceConfig

        return GuidanceConfig(
            t0=float(self.t0_spin.value()), start=str(self.start_combo.currentData()),
            n_steps=int(self.steps_spin.value()), method=str(self.method_combo.currentData()),
            guided_steps=int(self.guided_spin.value()), rule=str(self.rule_combo.currentData()),
            scale=float(self.scale_spin.value()), normalise=str(self.normalise_combo.currentData()),
            reference=str(self.reference_combo.currentData()), seed=int(self.seed_spin.value()), clamp=clamp,
            amp=self.amp_check.isChecked())
