"""What every trainer returns, and the tolerant config loading every trainer's checkpoints need."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True, eq=False)
class RunResult:
    """What a run left: its folder and checkpoints, how far it got, and the trained model (eval mode)."""

    out_dir: Path
    best_path: Path | None
    last_path: Path | None
    epochs_completed: int
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    history: list[dict]
    cancelled: bool
    device: str
    model: torch.nn.Module = field(repr=False)


def config_from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """``cls(**data)`` keeping only ``cls``'s fields, so checkpoints of older versions still load."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
