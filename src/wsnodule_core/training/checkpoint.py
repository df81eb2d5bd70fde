"""Self-describing training checkpoints: atomic saving, loading, RNG states, run folders.

A checkpoint is a dict saved with ``torch.save`` that holds plain Python values and tensors
only (so it loads with ``weights_only=True``): ``format``, ``kind`` (what model it holds),
``model_config``, ``train_config``, ``package_version``, ``torch_version``, ``epoch`` (epochs
done), ``global_step``, ``model_state``, ``optimizer_state``, ``scheduler_state``,
``scaler_state``, ``rng``, ``best_metric``, ``best_epoch``, ``history`` and free ``extra``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wsnodule_core.errors import CheckpointError, OutputExistsError
from wsnodule_core.io.writers import check_writable_folder

FORMAT = "wsnodule-checkpoint"
FORMAT_VERSION = 1
BEST, LAST = "best.pt", "last.pt"


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: the fields most callers need, and ``raw`` with everything."""

    path: Path
    kind: str
    model_config: dict
    train_config: dict
    epoch: int
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    history: list[dict]
    package_version: str
    torch_version: str
    raw: dict = field(repr=False)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus format fields and versions) to ``path`` via a temp file and a rename."""
    from wsnodule_core import __version__

    path = Path(path)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
                "torch_version": str(torch.__version__), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(document, temp)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return path


def load_error_text(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in words for the user, without PyTorch's
    advice to retry with ``weights_only=False`` (unpickling an untrusted file can run any code)."""
    text = str(error)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
        detail = detail.split("error:", 1)[-1].strip().rstrip(".")
        return ("the file holds Python objects other than tensors and plain containers"
                + (f" ({detail})" if detail else "")
                + "; wsnodule never unpickles such objects, as that could run any code. Give a file "
                  "written by wsnodule (or a plain state dict of tensors)")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu", *,
                    mmap: bool = False) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors mapped to ``map_location``).

    ``mmap`` maps the tensors from the file instead of reading them: cheap when only the fields
    are wanted (the kind, the configs), as before a model of that kind is loaded.
    """
    path = Path(path)
    if path.is_dir():
        path = path / BEST if (path / BEST).exists() else path / LAST
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; give a best.pt/last.pt written by "
                              "`wsnodule train` or its run folder.")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - every unreadable file gets the same advice
        raise CheckpointError(f"{path}: cannot read it as a wsnodule checkpoint ({load_error_text(error)}).") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wsnodule checkpoint (no format {FORMAT!r}); give a file "
                              "written by `wsnodule train`.")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {raw.get('format_version')!r}, this "
                              f"wsnodule reads version {FORMAT_VERSION}; retrain or use the matching version.")
    return Checkpoint(path, str(raw.get("kind", "")), dict(raw.get("model_config", {})),
                      dict(raw.get("train_config", {})), int(raw.get("epoch", 0)),
                      int(raw.get("global_step", 0)),
                      raw.get("best_metric"), raw.get("best_epoch"), list(raw.get("history", [])),
                      str(raw.get("package_version", "")), str(raw.get("torch_version", "")), raw)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (global), torch CPU and CUDA generator states, as checkpoint-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only when as many GPUs are visible)."""
    if "python" in state:
        random.setstate(_to_tuples(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], np.asarray(n["keys"], np.int64).astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached"]))
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].cpu())
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def prepare_run_dir(out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check a run folder before training: one that already holds checkpoints is refused unless
    ``resume`` (continue from its ``last.pt``) or ``overwrite`` (start again over it)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; give a folder for the training run.")
    check_writable_folder(out, "the run folder")
    existing = [p.name for p in (out / BEST, out / LAST) if p.exists()]
    if resume:
        if not (out / LAST).exists():
            raise CheckpointError(f"{out}: nothing to resume (no {LAST}); drop resume/--resume to start "
                                  "a new run.")
    elif existing and not overwrite:
        raise OutputExistsError(
            f"{out} already holds {', '.join(existing)} of an earlier run; pass resume=True (--resume) to "
            "continue it, overwrite=True (--overwrite) to start over, or give another folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_model(
    path: str | os.PathLike,
    kind: str,
    build: Callable[["Checkpoint"], torch.nn.Module],
    expected: str,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, "Checkpoint"]:
    """The model of a checkpoint of ``kind``, built by ``build(checkpoint)``, in eval mode on ``device``.

    ``path`` is ``best.pt``/``last.pt`` or its run folder; ``expected`` completes the error message
    "holds a ... model, not <expected>" for a checkpoint of another kind. ``device`` defaults to the CPU.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint.kind != kind:
        raise CheckpointError(f"{checkpoint.path}: holds a {checkpoint.kind or 'unknown'!r} model, not {expected}.")
    model = build(checkpoint)
    try:
        model.load_state_dict(checkpoint.raw["model_state"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{checkpoint.path}: its weights do not fit the model it describes ({error}).") from error
    model.to(torch.device(device) if device is not None else torch.device("cpu"))
    return model.eval(), checkpoint


@dataclass(frozen=True)
class ResumeState:
    """Where a run stands: counters, history and best metric (all zero/empty for a fresh run)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None


def restore_training_state(checkpoint: "Checkpoint | None", model: torch.nn.Module, optimizer, scheduler,
                           scaler) -> ResumeState:
    """Load model, optimiser, scheduler, scaler and RNG states from ``checkpoint`` (None: a fresh run)."""
    if checkpoint is None:
        return ResumeState()
    raw = checkpoint.raw
    model.load_state_dict(raw["model_state"])
    optimizer.load_state_dict(raw["optimizer_state"])
    scheduler.load_state_dict(raw["scheduler_state"])
    if raw.get("scaler_state"):
        scaler.load_state_dict(raw["scaler_state"])
    restore_rng_state(raw.get("rng", {}))
    return ResumeState(checkpoint.epoch, int(raw.get("step_in_epoch", 0)), checkpoint.global_step,
                       list(checkpoint.history), checkpoint.best_metric, checkpoint.best_epoch)
