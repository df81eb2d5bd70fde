"""Class-balanced batches: each batch holds as many positives as negatives (method-agnostic).

The batches of an epoch depend only on ``(seed, epoch)``, as with torch's DistributedSampler's
``set_epoch``; under DDP each rank takes every ``world_size``-th batch, so ranks see disjoint
batches and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

from wsnodule_core.errors import TrainingDataError


class BalancedBatchSampler:
    """Batches of indices, half from ``labels == 1`` and half from ``labels == 0``.

    ``epoch_size="balanced"`` (the NAM paper's set: every slice of the smaller class and as many
    of the other) gives ``2 * min(n_pos, n_neg) // batch_size`` global batches per epoch;
    ``"all"`` gives ``len(labels) // batch_size`` (the smaller class repeats); at least one per
    rank. Each class is drawn from successive random permutations of its members, so no member
    repeats before all were drawn, and the larger class shows a fresh subset every epoch.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_size: str = "balanced") -> None:
        labels = np.asarray(labels).astype(int).ravel()
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise TrainingDataError(
                f"class-balanced batches need both classes, got {len(self.positives)} positive and "
                f"{len(self.negatives)} negative slice(s); use a data set with nodule and nodule-free slices."
            )
        if batch_size < 2:
            raise TrainingDataError(f"batch_size must be at least 2 for balanced batches, got {batch_size}.")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        if epoch_size not in ("balanced", "all"):
            raise TrainingDataError(f"epoch_size must be 'balanced' or 'all', got {epoch_size!r}.")
        smaller = min(len(self.positives), len(self.negatives))
        n_slices = 2 * smaller if epoch_size == "balanced" else len(labels)
        self.n_global = max(world_size, n_slices // self.batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_global // self.world_size

    def global_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_pos = self.batch_size // 2
        n_neg = self.batch_size - n_pos
        pos = self._stream(self.positives, n_pos * self.n_global, rng)
        neg = self._stream(self.negatives, n_neg * self.n_global, rng)
        batches = []
        for b in range(self.n_global):
            batch = np.concatenate([pos[b * n_pos:(b + 1) * n_pos], neg[b * n_neg:(b + 1) * n_neg]])
            batches.append(batch[rng.permutation(len(batch))])
        return batches

    def __iter__(self):
        batches = self.global_batches()[self.rank::self.world_size][: len(self)]
        return iter([b.tolist() for b in batches])

    @staticmethod
    def _stream(members: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        repeats = -(-n // len(members))
        return np.concatenate([members[rng.permutation(len(members))] for _ in range(repeats)])[:n]
