"""Choosing the compute device (CUDA, then Apple MPS, then CPU) and saying why when falling back."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch

from wsnodule_core.errors import ModelConfigError

PREFERENCES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class DeviceChoice:
    """The device used, the one asked for, and why they differ (None when they do not)."""

    device: torch.device
    requested: str
    fallback_reason: str | None = None

    def describe(self) -> str:
        text = f"device: {self.device}"
        if self.device.type == "cuda":
            text += f" ({torch.cuda.get_device_name(self.device)})"
        return text + (f" [{self.fallback_reason}]" if self.fallback_reason else "")


def device_of(model) -> torch.device:
    """The device of ``model``'s first parameter, else of its first buffer; the CPU for a module with
    neither, or for anything that is not a ``torch.nn.Module`` (a plain callable)."""
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(preference: str = "auto") -> DeviceChoice:
    """The device for ``preference``: "auto" (CUDA, then MPS, then CPU), "cuda", "cuda:N", "mps" or "cpu".

    A device that is not available falls back to the next one of the "auto" order and
    ``fallback_reason`` says why (also when "auto" ends on the CPU).
    """
    pref = str(preference).strip().lower()
    base = pref.split(":")[0]
    if base not in PREFERENCES or (":" in pref and (base != "cuda" or not pref.split(":")[1].isdigit())):
        raise ModelConfigError(f"device must be one of {PREFERENCES} (or cuda:N), got {preference!r}.")
    order = {"auto": ("cuda", "mps"), "cuda": ("cuda", "mps"), "mps": ("mps",), "cpu": ()}[base]
    reasons: list[str] = []
    for kind in order:
        if kind == "cuda":
            index = int(pref.split(":")[1]) if ":" in pref else 0
            if not torch.cuda.is_available():
                built = torch.backends.cuda.is_built()
                reasons.append("CUDA not available" + ("" if built else " (this PyTorch build has no CUDA)"))
            elif index >= torch.cuda.device_count():
                reasons.append(f"{pref} does not exist ({torch.cuda.device_count()} CUDA device(s))")
            else:
                return DeviceChoice(torch.device("cuda", index), pref)
        elif _mps_available():
            reason = "; ".join(reasons) + ", using MPS" if reasons else None
            return DeviceChoice(torch.device("mps"), pref, reason)
        else:
            reasons.append("MPS not available")
    reason = "; ".join(reasons) + ", using the CPU" if reasons else None
    return DeviceChoice(torch.device("cpu"), pref, reason)


def amp_enabled(device: torch.device, requested: bool | str = "auto") -> bool:
    """Mixed precision is used on CUDA only ("auto" = on CUDA; True elsewhere is ignored)."""
    return device.type == "cuda" and requested in (True, "auto", "true", "on")


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` (float16) on CUDA when enabled, else a no-op context."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=bool(enabled and device.type == "cuda"))


@contextlib.contextmanager
def deterministic(enabled: bool):
    """Deterministic algorithms (warn-only) and no cuDNN autotuning inside the block when ``enabled``;
    the previous settings come back afterwards."""
    previous, previous_cudnn = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_cudnn
