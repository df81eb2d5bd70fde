"""Grid presets of the phantom data-set builder, apart from the builder so that the command line can
list them without importing the imaging stack."""

from __future__ import annotations

#: Grid presets of the phantom builder: name -> (shape (z, y, x), spacing (z, y, x) mm).
SIZE_PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "tiny": ((24, 96, 96), (5.0, 3.6, 3.6)),
    "small": ((48, 192, 192), (5.0, 1.8, 1.8)),
    "medium": ((96, 256, 256), (2.5, 1.35, 1.35)),
    "paper": ((128, 512, 512), (2.5, 0.7, 0.7)),
}
