"""A checkpoint without its training state, for shipping: the step of a rebuild command that makes a
run's ``last.pt`` small enough for the package (issue 16: each file at most 20 MB).

    python -m wsnodule_core.shipped.slim RUN/last.pt src/wsnodule_core/shipped/models/NAME.pt

Kept: the format fields, the kind, the model and training configs, the weights (``model_state`` and,
for a flow prior, ``ema_state``: what :func:`~wsnodule_core.flow.train_prior.load_prior` loads), the step
counters, the history and any patch protocol. Dropped: the optimiser, scheduler and gradient-scaler
states and the random-number states, which only resuming needs; a slim file cannot be resumed. The
output is written atomically and never over an existing file; its bytes depend on the content only (the
archive inside is always named "archive", not after a temporary file), so the same weights give the same
SHA-256.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wsnodule_core.errors import OutputExistsError

#: The entries only resuming a run needs.
TRAINING_STATE = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "augment_rng", "epoch_sums")


def slim_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write ``source`` (a wsnodule checkpoint) to ``target`` without :data:`TRAINING_STATE`; returns ``target``."""
    import io

    import torch

    from wsnodule_core.io.writers import write_atomically
    from wsnodule_core.training.checkpoint import load_checkpoint

    target = Path(target)
    if target.exists():
        raise OutputExistsError(f"{target} already exists; remove it first or give another path.")
    raw = load_checkpoint(source).raw
    payload = {k: v for k, v in raw.items() if k not in TRAINING_STATE}
    payload["slim"] = True
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # a file object: the archive is named "archive" whatever the target
    write_atomically(target, False, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy a checkpoint without its training state (for shipping).")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    path = slim_checkpoint(args.source, args.target)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
