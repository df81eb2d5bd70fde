"""The probabilistic transformer of PW4MedSeg: probabilistic self-attention (PMSA) in a 3D UNETR.

PMSA (one head, tokens i, j; q, k, v of head dimension d): a linear layer reads the
concatenation [q_i; k_j] and gives the mean ``mu_ij`` and log-variance ``log sigma^2_ij`` of a
Gaussian attention logit. Training samples ``a_ij = mu_ij + sigma_ij * eps`` (eps ~ N(0, 1),
the reparameterisation trick), deterministic inference uses ``a_ij = mu_ij``; then softmax over j
and times V as usual. Each layer also returns ``KL(N(mu, sigma^2) || N(q_i.k_j / sqrt(d), s^2))``
(mean over batch, heads and token pairs) that the loss adds with a weight. As in the authors'
code the prior mean is not detached: the KL also pulls q.k towards mu.

A linear layer on [q_i; k_j] is ``W_q q_i + W_k k_j + b``, so it is computed from per-token
projections broadcast-added to (B, H, N, N): memory grows as N^2 like plain attention instead of
the (B, H, N, N, 2d) concatenation of the authors' code (which also fixed N = 216).

:class:`ProbabilisticUNETR` is MONAI's UNETR (its blocks, its decoder) with PMSA transformer
blocks; it accepts any input whose sides are multiples of the patch size. API:

- ``model(x)`` -> logits (B, 1, D, H, W) (what sliding-window inference needs);
- ``model(x, return_kl=True)`` -> ``(logits, kl)`` with ``kl`` the per-layer KLs, shape
  (num_layers,), to give to :class:`~wsnodule_core.pw4medseg.loss.ProbabilityInformedLoss`;
- ``stochastic=None`` samples the logits in training mode only; ``True``/``False`` force it
  (``True`` in eval mode gives the K stochastic passes of the paper, see
  :meth:`ProbabilisticUNETR.mc_predict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from monai.networks.blocks import (
    MLPBlock,
    PatchEmbeddingBlock,
    UnetOutBlock,
    UnetrBasicBlock,
    UnetrPrUpBlock,
    UnetrUpBlock,
)
from torch import nn

from wsnodule_core.errors import ModelConfigError

NORMS = ("instance", "batch")
LOGVAR_LIMIT = 20.0  # log-variances clamped to +-this: sigma = exp(logvar / 2) stays finite in float16


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor,
                prior_std: float = 1.0) -> torch.Tensor:
    """Element-wise ``KL(N(mu, exp(logvar)) || N(prior_mean, prior_std^2))`` (closed form)."""
    prior_var = float(prior_std) ** 2
    return 0.5 * (math.log(prior_var) - logvar + (logvar.exp() + (mu - prior_mean) ** 2) / prior_var - 1.0)


class ProbabilisticSelfAttention(nn.Module):
    """Probabilistic multi-head self-attention (PMSA).

    Parameters
    ----------
    hidden_size, num_heads
        Token width and head count (``hidden_size % num_heads == 0``).
    prior_std
        ``s``, the standard deviation of the KL prior ``N(q.k / sqrt(d), s^2)``.
    per_head_pair_linear
        False (the authors' code): one [q_i; k_j] -> (mu, log sigma^2) layer shared by all heads;
        True: one per head.
    dropout_rate, qkv_bias
        As MONAI's ``SABlock``.

    ``forward(x, stochastic=None)`` takes tokens (B, N, hidden) and returns ``(out, kl)``:
    ``out`` (B, N, hidden) and ``kl`` the scalar mean KL over batch, heads and token pairs.
    ``stochastic=None`` samples when the module is training.
    """

    def __init__(self, hidden_size: int, num_heads: int, *, prior_std: float = 1.0,
                 per_head_pair_linear: bool = False, dropout_rate: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ModelConfigError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}.")
        if not prior_std > 0:
            raise ModelConfigError(f"prior_std must be positive, got {prior_std}.")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.prior_std = float(prior_std)
        self.pair_heads = num_heads if per_head_pair_linear else 1
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        # rows [2h, 2h+1] = (mu, log sigma^2) of head h; columns [:d] read q_i, [d:] read k_j
        self.pair_proj = nn.Linear(2 * self.head_dim, 2 * self.pair_heads)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.drop_weights = nn.Dropout(dropout_rate)
        self.drop_output = nn.Dropout(dropout_rate)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of shape (B, H, N, d) from tokens (B, N, hidden)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def pair_parameters(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` and ``log sigma^2`` (B, H, N, N) of every pair, without building [q_i; k_j]."""
        d = self.head_dim
        weight = self.pair_proj.weight.view(self.pair_heads, 2, 2 * d)
        bias = self.pair_proj.bias.view(1, self.pair_heads, 2, 1, 1)
        w_q = weight[..., :d].expand(self.num_heads, 2, d)
        w_k = weight[..., d:].expand(self.num_heads, 2, d)
        from_q = torch.einsum("bhnd,hcd->bhcn", q, w_q)
        from_k = torch.einsum("bhnd,hcd->bhcn", k, w_k)
        params = from_q.unsqueeze(-1) + from_k.unsqueeze(-2) + bias.to(from_q.dtype)  # (B, H, 2, N, N)
        return params[:, :, 0], params[:, :, 1].clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)

    def forward(self, x: torch.Tensor, stochastic: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 3:
            raise ModelConfigError(f"ProbabilisticSelfAttention expects tokens (B, N, hidden), got "
                                   f"{tuple(x.shape)}.")
        q, k, v = self.split_qkv(x)
        mu, logvar = self.pair_parameters(q, k)
        prior_mean = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        kl_dtype = torch.promote_types(mu.dtype, torch.float32)  # never in float16 (autocast)
        kl = gaussian_kl(mu.to(kl_dtype), logvar.to(kl_dtype), prior_mean.to(kl_dtype), self.prior_std).mean()
        sample = self.training if stochastic is None else bool(stochastic)
        logits = mu
        if sample:  # eps drawn contiguous: the same seed gives the same eps as a (B, H, N, N) randn
            logits = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
        attn = self.drop_weights(logits.softmax(dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape)
        return self.drop_output(self.out_proj(out)), kl


class ProbabilisticTransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + PMSA(LN(x))`` then ``x + MLP(LN(x))``; returns ``(x, kl)``."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, *, prior_std: float = 1.0,
                 per_head_pair_linear: bool = False, dropout_rate: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = ProbabilisticSelfAttention(hidden_size, num_heads, prior_std=prior_std,
                                               per_head_pair_linear=per_head_pair_linear,
                                               dropout_rate=dropout_rate, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate)

    def forward(self, x: torch.Tensor, stochastic: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        attended, kl = self.attn(self.norm1(x), stochastic=stochastic)
        x = x + attended
        return x + self.mlp(self.norm2(x)), kl


@dataclass(frozen=True)
class PTransformerConfig:
    """The probabilistic UNETR.

    ``img_size`` is the training crop (z, y, x): the learned position embedding lives on its
    patch grid and is interpolated for other inputs (any side that is a multiple of
    ``patch_size`` works). ``patch_size`` is a power of two 2^n; the decoder then has n
    up-sampling stages and takes n - 1 skips from the transformer at layers k * num_layers // n
    (k = 1..n-1): layers 3, 6, 9 of 12 for patch 16 as in UNETR. ``prior_std`` is the KL prior's
    s; ``per_head_pair_linear`` see :class:`ProbabilisticSelfAttention`.
    Use :meth:`paper` (ViT-B, 96^3) or :meth:`compact` (CPU, 32^3).
    """

    in_channels: int = 1
    img_size: tuple[int, int, int] = (96, 96, 96)
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    feature_size: int = 16
    norm_name: str = "instance"
    res_block: bool = True
    conv_block: bool = True
    dropout_rate: float = 0.0
    qkv_bias: bool = False
    prior_std: float = 1.0
    per_head_pair_linear: bool = False

    def __post_init__(self) -> None:
        size = self.img_size
        size = (size,) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
        object.__setattr__(self, "img_size", size)
        for name in ("in_channels", "hidden_size", "num_layers", "num_heads", "mlp_dim", "feature_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"PTransformerConfig.{name} must be a positive integer, got "
                                       f"{getattr(self, name)}.")
        p = int(self.patch_size)
        if p < 2 or p & (p - 1):
            raise ModelConfigError(f"PTransformerConfig.patch_size must be a power of two >= 2 (the decoder "
                                   f"up-samples by 2 per stage), got {self.patch_size}.")
        if len(size) != 3 or any(s < p or s % p for s in size):
            raise ModelConfigError(f"PTransformerConfig.img_size must be 3 sides that are multiples of "
                                   f"patch_size {p} (e.g. {(p * 3,) * 3}), got {self.img_size}.")
        if self.hidden_size % self.num_heads:
            raise ModelConfigError(f"PTransformerConfig.hidden_size {self.hidden_size} must be divisible by "
                                   f"num_heads {self.num_heads}.")
        if self.norm_name not in NORMS:
            raise ModelConfigError(f"PTransformerConfig.norm_name must be one of {NORMS}, got "
                                   f"{self.norm_name!r}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ModelConfigError(f"PTransformerConfig.dropout_rate must lie in [0, 1), got "
                                   f"{self.dropout_rate}.")
        if not self.prior_std > 0:
            raise ModelConfigError(f"PTransformerConfig.prior_std must be positive, got {self.prior_std}.")

    @property
    def levels(self) -> int:
        """n with patch_size = 2^n: the number of decoder up-sampling stages."""
        return int(self.patch_size).bit_length() - 1

    @property
    def skip_layers(self) -> tuple[int, ...]:
        """0-based indices of the transformer layers whose outputs feed the skips, shallow first."""
        n = self.levels
        return tuple(k * self.num_layers // n for k in range(1, n))

    @classmethod
    def paper(cls, **overrides) -> "PTransformerConfig":
        """UNETR with a ViT-B encoder (hidden 768, 12 layers, 12 heads, patch 16), 96^3 crops."""
        return replace(cls(), **overrides)

    @classmethod
    def compact(cls, **overrides) -> "PTransformerConfig":
        """CPU size: hidden 96, 4 layers of 4 heads, MLP 384, patch 8, feature size 8, 32^3 crops (64 tokens),
        batch norm (instance norm, the paper's, learnt about half as fast in short CPU runs:
        ``docs/pw4medseg_results.md``).

        Forward + backward of one 32^3 crop takes about 0.3 s on one CPU thread (48^3: about 0.8 s, the
        full-resolution convolutions dominate); see ``benchmarks/pw4medseg_model_cost.py``.
        """
        return replace(cls(img_size=(32, 32, 32), patch_size=8, hidden_size=96, num_layers=4, num_heads=4,
                           mlp_dim=384, feature_size=8, norm_name="batch"), **overrides)

    def to_dict(self) -> dict:
        return {**asdict(self), "img_size": list(self.img_size)}

    @classmethod
    def from_dict(cls, data: dict) -> "PTransformerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class ProbabilisticUNETR(nn.Module):
    """UNETR (Hatamizadeh et al. 2022, MONAI's blocks) with PMSA transformer blocks; one logit channel.

    ``forward(x, *, stochastic=None, return_kl=False)``: ``x`` (B, in_channels, D, H, W) with
    every side a multiple of ``patch_size``; returns logits (B, 1, D, H, W), or ``(logits, kl)``
    with ``kl`` (num_layers,) the per-layer mean KL when ``return_kl``.
    """

    def __init__(self, config: PTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PTransformerConfig()
        common = dict(spatial_dims=3, kernel_size=3, norm_name=cfg.norm_name, res_block=cfg.res_block)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=cfg.in_channels, img_size=cfg.img_size, patch_size=cfg.patch_size,
            hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, proj_type="conv",
            pos_embed_type="learnable", dropout_rate=cfg.dropout_rate, spatial_dims=3)
        attention = dict(prior_std=cfg.prior_std, per_head_pair_linear=cfg.per_head_pair_linear,
                         dropout_rate=cfg.dropout_rate, qkv_bias=cfg.qkv_bias)
        self.blocks = nn.ModuleList(
            ProbabilisticTransformerBlock(cfg.hidden_size, cfg.mlp_dim, cfg.num_heads, **attention)
            for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        n, fs = cfg.levels, cfg.feature_size
        self.encoder1 = UnetrBasicBlock(in_channels=cfg.in_channels, out_channels=fs, stride=1, **common)
        # skip at resolution 1/2^level: tokens up-sampled by 2^(n - level) (UNETR's encoder2..4)
        self.skip_encoders = nn.ModuleList(
            UnetrPrUpBlock(in_channels=cfg.hidden_size, out_channels=fs * 2 ** level, num_layer=n - level - 1,
                           stride=1, upsample_kernel_size=2, conv_block=cfg.conv_block, **common)
            for level in range(1, n))
        # decoders from the bottleneck (1/2^n) up to full resolution (UNETR's decoder5..2)
        self.decoders = nn.ModuleList(
            UnetrUpBlock(in_channels=cfg.hidden_size if level == n - 1 else fs * 2 ** (level + 1),
                         out_channels=fs * 2 ** level, upsample_kernel_size=2, **common)
            for level in reversed(range(n)))
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=1)

    def token_grid(self, spatial: tuple[int, ...]) -> tuple[int, int, int]:
        """The patch grid of an input of this spatial size, or a ModelConfigError saying which sizes work."""
        p = self.config.patch_size
        if len(spatial) != 3 or any(s < p or s % p for s in spatial):
            raise ModelConfigError(
                f"ProbabilisticUNETR: input size {tuple(spatial)} does not work; every side must be a "
                f"positive multiple of the patch size {p} (e.g. {p * 2}, {p * 3}, {p * 4}; trained on "
                f"{self.config.img_size}). Crop or pad the input, or use sliding-window inference.")
        return tuple(s // p for s in spatial)

    def _position_embeddings(self, grid: tuple[int, int, int]) -> torch.Tensor:
        pos = self.patch_embedding.position_embeddings  # (1, N_train, hidden)
        train_grid = tuple(s // self.config.patch_size for s in self.config.img_size)
        if grid == train_grid:
            return pos
        volume = pos.transpose(1, 2).reshape(1, -1, *train_grid)
        volume = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
        return volume.flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        tokens = self.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.patch_embedding.dropout(tokens + self._position_embeddings(grid))

    @staticmethod
    def _to_volume(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, x: torch.Tensor, *, stochastic: bool | None = None, return_kl: bool = False):
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(f"ProbabilisticUNETR expects (B, {self.config.in_channels}, D, H, W), got "
                                   f"shape {tuple(x.shape)}.")
        grid = self.token_grid(tuple(x.shape[2:]))
        tokens = self._embed(x, grid)
        hidden, kls = [], []
        for block in self.blocks:
            tokens, kl = block(tokens, stochastic=stochastic)
            hidden.append(tokens)
            kls.append(kl)
        skips = [self.encoder1(x)] + [enc(self._to_volume(hidden[i], grid))
                                      for enc, i in zip(self.skip_encoders, self.config.skip_layers)]
        out = self._to_volume(self.norm(tokens), grid)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            out = decoder(out, skip)
        logits = self.out(out)
        return (logits, torch.stack(kls)) if return_kl else logits

    @torch.no_grad()
    def mc_predict(self, x: torch.Tensor, passes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the sigmoid over ``passes`` stochastic passes (the paper: K = 6).

        Runs in the current train/eval mode with sampling forced on; both outputs are (B, 1, D, H, W).
        """
        if passes < 1:
            raise ModelConfigError(f"mc_predict: passes must be >= 1, got {passes}.")
        probs = torch.stack([torch.sigmoid(self(x, stochastic=True).float()) for _ in range(passes)])
        std = probs.std(dim=0, unbiased=False)
        return probs.mean(dim=0), std


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
