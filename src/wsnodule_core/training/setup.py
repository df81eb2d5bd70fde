"""The start every trainer shares: the run folder, the resumed checkpoint, the device, the processes.

:func:`start_run` checks the run folder (resume / overwrite rules), loads ``last.pt`` when resuming
and refuses a checkpoint of another kind, lets the trainer settle its config against it, chooses the
device and, for trainers that support it, joins the torchrun process group (one GPU per process).
The :class:`RunSetup` it returns is a context manager that leaves the process group on exit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

import torch

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.training import distributed as ddp
from wsnodule_core.training.checkpoint import LAST, Checkpoint, load_checkpoint, prepare_run_dir
from wsnodule_core.training.device import DeviceChoice, choose_device


class _HasDevice(Protocol):
    device: str


ConfigT = TypeVar("ConfigT", bound=_HasDevice)


def _silent(text: str) -> None:
    return None


@dataclass(frozen=True, eq=False)
class RunSetup(Generic[ConfigT]):
    """A started run: its folder, the checkpoint it resumes (None for a fresh run), its config, the
    device choice, this process's place among the processes and device, and ``say`` (the trainer's
    log on rank 0, silent on the other ranks)."""

    out: Path
    checkpoint: Checkpoint | None
    config: ConfigT
    choice: DeviceChoice
    ctx: ddp.DistContext
    device: torch.device
    say: Callable[[str], None]

    def __enter__(self) -> "RunSetup[ConfigT]":
        return self

    def __exit__(self, *exc) -> None:
        ddp.shutdown(self.ctx)


def resume_checkpoint(out: Path, kind: str, name: str) -> Checkpoint:
    """``out``'s ``last.pt``, refused unless it holds a ``kind`` run (``name`` names that run)."""
    checkpoint = load_checkpoint(out / LAST)
    if checkpoint.kind != kind:
        raise CheckpointError(f"{out / LAST}: holds a {checkpoint.kind or 'unknown'!r} run, not a {name} run; "
                              "give that run's own folder.")
    return checkpoint


def start_run(
    out_dir: str | os.PathLike,
    *,
    kind: str,
    name: str,
    configure: Callable[[Checkpoint | None], ConfigT],
    resume: bool = False,
    overwrite: bool = False,
    distributed: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunSetup[ConfigT]:
    """Prepare a training run in ``out_dir``.

    Parameters
    ----------
    kind
        The checkpoint kind the trainer writes; resuming a checkpoint of another kind is refused.
    name
        The method in messages ("U-Net", "flow prior", ...).
    configure
        ``configure(checkpoint)`` returns the run's config (with a ``device`` field) given the
        resumed checkpoint (None for a fresh run); it raises when the two cannot go together.
    resume, overwrite
        The run folder rules of :func:`~wsnodule_core.training.checkpoint.prepare_run_dir`.
    distributed
        True: join the process group torchrun describes (if any) and train on ``cuda:LOCAL_RANK``;
        False: refuse to run under torchrun (``WORLD_SIZE`` > 1), before touching the folder.
    log
        ``log(text)`` for one-line messages; the device choice is the first.
    """
    if not distributed and ddp.env_world_size() > 1:
        raise ModelConfigError(f"{name} training runs in one process only (no DDP); run it without torchrun "
                               "(WORLD_SIZE is set), one job per GPU.")
    out = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    checkpoint = resume_checkpoint(out, kind, name) if resume else None
    config = configure(checkpoint)
    choice = choose_device(config.device)
    ctx = ddp.init_distributed(choice.device) if distributed else ddp.DistContext()
    device = ddp.device_for_rank(choice.device, ctx)
    say = (log or _silent) if ctx.is_main else _silent
    say(choice.describe() + (f", {ctx.world_size} processes" if ctx.enabled else ""))
    return RunSetup(out, checkpoint, config, choice, ctx, device, say)
