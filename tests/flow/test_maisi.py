"""The MAISI-v2 adapter: MONAI's real MAISI classes at toy size, local weights, conventions end to end."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import RFlowScheduler

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.flow.maisi import (MaisiConfig, MaisiPrior, build_maisi_autoencoder, build_maisi_unet,
                                      from_maisi_layout, load_maisi, maisi_time_grid,
                                      to_maisi_layout)
from wsnodule_core.flow.rectified_flow import integrate, invert

TINY = MaisiConfig.tiny()
SCALE = 0.8


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # MONAI zeroes the UNet's output and residual-branch convolutions (v = 0 everywhere); give
    # every zero weight values so that the outputs depend on all inputs
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return _randomise(build_maisi_unet(TINY), 1), _randomise(build_maisi_autoencoder(TINY), 2)


@pytest.fixture(scope="module")
def files(nets, tmp_path_factory):
    """The tiny weights saved as MAISI writes them: the UNet in a dict with its scale factor."""
    unet, vae = nets
    folder = tmp_path_factory.mktemp("maisi")
    torch.save({"epoch": 3, "num_train_timesteps": 1000, "scale_factor": torch.tensor(SCALE),
                "unet_state_dict": unet.state_dict()}, folder / "diff_unet_3d_rflow-ct.pt")
    torch.save(vae.state_dict(), folder / "autoencoder_v1.pt")
    return folder / "diff_unet_3d_rflow-ct.pt", folder / "autoencoder_v1.pt"


@pytest.fixture(scope="module")
def prior(files):
    return load_maisi(*files, TINY, "cpu", spacing=(1.25, 0.7, 0.7))


def _images(shape=(2, 1, 32, 32, 32), seed=3) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_default_preset_is_the_published_architecture():
    config = MaisiConfig.preset("rflow-ct")
    assert (config.latent_channels, config.compression, config.divisor) == (4, 4, 32)
    with torch.device("meta"):  # no memory: count the weights only
        unet, vae = build_maisi_unet(config), build_maisi_autoencoder(config)
    # 180.5 M and 20.9 M: measured independently in the shared environment notes
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(180.5e6, rel=1e-3)
    assert sum(p.numel() for p in vae.parameters()) == pytest.approx(20.9e6, rel=3e-3)
    assert unet.include_spacing_input and unet.num_class_embeds == 128
    assert not unet.include_top_region_index_input


def test_config_validation():
    with pytest.raises(ModelConfigError, match="patch_size"):
        MaisiConfig.tiny(patch_size=48)
    with pytest.raises(ModelConfigError, match="multiple of vae_norm_groups"):
        MaisiConfig.tiny(vae_channels=(8, 12, 16))
    with pytest.raises(ModelConfigError, match="unknown MAISI preset"):
        MaisiConfig.preset("ddpm")
    assert MaisiConfig.from_dict(TINY.to_dict()) == TINY
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 500.0, 3000.0])
    assert torch.allclose(TINY.to_model(hu), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))
    assert torch.allclose(TINY.to_hu(TINY.to_model(hu[1:4])), hu[1:4])


def test_load_round_trip_matches_the_saved_networks(nets, prior):
    unet, vae = nets
    assert prior.scale_factor == pytest.approx(SCALE)
    assert not any(p.requires_grad for p in prior.parameters())
    z = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(prior.decode(z), from_maisi_layout(vae.decode(z / SCALE)))
        t = torch.tensor([0.3, 0.9])
        direct = unet(x=z, timesteps=t * 1000, spacing_tensor=torch.tensor([[70.0, 70.0, 125.0]] * 2),
                      class_labels=torch.tensor([1, 1]))
        assert torch.equal(prior.velocity(z, t), direct)


def test_velocity_is_the_unet_with_converted_time_spacing_and_modality(nets, prior):
    unet, _ = nets
    z = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    spacing_zyx = torch.tensor([[2.0, 0.8, 0.6], [1.0, 1.0, 1.0]])
    prior.set_spacing(spacing_zyx)
    try:
        with torch.no_grad():
            v = prior(z, 0.25)
            # MAISI: timesteps T t, spacing (x, y, z) in mm x 100, modality CT = 1; v = x0 - eps as is
            direct = unet(z, torch.tensor([250.0, 250.0]), spacing_tensor=spacing_zyx.flip(-1) * 100,
                          class_labels=torch.ones(2, dtype=torch.long))
            assert torch.allclose(v, direct, atol=1e-6)
            assert not torch.allclose(v, prior(z, 0.75), atol=1e-3)           # time matters
            prior.set_spacing((1.0, 1.0, 1.0))
            assert not torch.allclose(v, prior(z, 0.25), atol=1e-4)           # spacing matters
            prior.set_spacing(torch.ones(3, 3))
            with pytest.raises(ModelConfigError, match="batch has 2"):
                prior(z, 0.25)
            with pytest.raises(ModelConfigError, match="multiple of 8"):
                prior(torch.zeros(1, 4, 8, 8, 12), 0.5)
    finally:
        prior.set_spacing((1.25, 0.7, 0.7))


def test_classifier_free_guidance_combines_conditional_and_unconditional(nets):
    unet, vae = nets
    guided = MaisiPrior(unet, vae, TINY, SCALE, cfg_scale=2.5)
    z = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        spacing = torch.full((1, 3), 100.0)
        cond = unet(z, torch.tensor([400.0]), spacing_tensor=spacing, class_labels=torch.tensor([1]))
        uncond = unet(z, torch.tensor([400.0]), spacing_tensor=spacing, class_labels=torch.tensor([0]))
        assert torch.allclose(guided(z, 0.4), uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_encode_decode_shapes_layout_and_gradients(prior):
    x = _images((1, 1, 32, 64, 32))                         # (z, y, x)
    with torch.no_grad():
        z = prior.encode(x)
        assert z.shape == (1, 4, 8, 16, 8)                  # MAISI's (x, y, z), 4x smaller, 4 channels
        out = prior.decode(z)
    assert out.shape == x.shape
    # the library's (z, y, x) LPS patch is MAISI's (x, y, z) RAS one, transposed and flipped
    maisi = MaisiPrior(prior.unet, prior.autoencoder, TINY, prior.scale_factor, layout="maisi")
    with torch.no_grad():
        assert torch.allclose(maisi.encode(to_maisi_layout(x)), z, atol=1e-6)
    assert torch.equal(from_maisi_layout(to_maisi_layout(x)), x)
    assert torch.equal(to_maisi_layout(x)[0, 0, -1, -1, 0], x[0, 0, 0, 0, 0])  # x flipped to R, y to A
    # mean encoding is deterministic; sampling draws from the posterior
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert torch.equal(prior.encode(x), z)
        assert not torch.equal(prior.encode(x, sample=True, generator=g), z)
    # guidance differentiates an image loss through decode and the velocity to the latent
    latent = z.clone().requires_grad_(True)
    loss = prior.decode(latent).mean() + prior(latent, 0.5).square().mean()
    (grad,) = torch.autograd.grad(loss, latent)
    assert grad.abs().sum() > 0
    with pytest.raises(ModelConfigError, match="multiple of 32"):
        prior.encode(_images((1, 1, 32, 32, 16)))


def test_euler_integration_matches_monai_rflow_scheduler(nets, prior):
    """Our Euler sampler through the adapter == MAISI's loop (UNet + RFlowScheduler.step)."""
    unet, _ = nets
    z = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(7))
    # integer timesteps: MONAI 1.6.1's step truncates next_timestep to an int when computing dt
    # (float timesteps, as rflow-ct uses, then step by up to 1/T less than the grid says)
    scheduler = RFlowScheduler(1000, use_discrete_timesteps=True, use_timestep_transform=True)
    scheduler.set_timesteps(num_inference_steps=5, input_img_size_numel=8 ** 3)
    steps = [float(s) for s in scheduler.timesteps] + [0.0]
    spacing = torch.tensor([[70.0, 70.0, 125.0]])
    expected = z.clone()
    with torch.no_grad():
        for t, t_next in zip(steps[:-1], steps[1:]):
            v = unet(expected, torch.tensor([t]), spacing_tensor=spacing, class_labels=torch.tensor([1]))
            expected, _ = scheduler.step(v, t, expected, t_next)
    ours = integrate(prior, z, times=[s / 1000 for s in steps], method="euler")
    assert torch.allclose(ours.x, expected, atol=1e-5)
    assert (ours.x - z).abs().max() > 0.1                   # the flow did move the latent
    # inversion then generation through the adapter returns close to the start
    back = integrate(prior, invert(prior, expected, 0.3, 8, method="heun").x, 0.3, 0.0, 8, method="heun").x
    assert (back - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("latent", [(8, 8, 8), (16, 16, 16), (64, 64, 32)])
def test_time_grid_is_maisis_shifted_schedule(latent):
    scheduler = RFlowScheduler(1000, use_discrete_timesteps=False, use_timestep_transform=True)
    scheduler.set_timesteps(num_inference_steps=30, input_img_size_numel=latent[0] * latent[1] * latent[2])
    times = maisi_time_grid(1.0, 0.0, 30, latent)
    assert len(times) == 31 and times[0] == 1.0 and times[-1] == 0.0
    # MAISI rounds its timesteps to float16 (0.5 at 1000)
    ours = torch.tensor(times[:-1], dtype=torch.float64) * 1000
    assert torch.allclose(ours, scheduler.timesteps.double(), atol=0.5)
    assert all(a > b for a, b in zip(times, times[1:]))
    # a guided start at t0 moves the same way: down for latents under 32^3, up above
    start = maisi_time_grid(0.4, 0.0, 4, latent)[0]
    assert start < 0.4 if latent[0] * latent[1] * latent[2] < 32 ** 3 else start > 0.4


def test_missing_and_mismatched_weights_give_clear_errors(files, nets, tmp_path):
    unet_file, vae_file = files
    with pytest.raises(CheckpointError, match=r"unet_weights=.*diff_unet_3d_rflow-ct\.pt.*never downloads"):
        load_maisi(tmp_path / "nope.pt", vae_file, TINY)
    with pytest.raises(CheckpointError, match=r"autoencoder_weights=.*autoencoder_v1\.pt"):
        load_maisi(unet_file, tmp_path / "nope.pt", TINY)
    # the two files swapped: every key is wrong, the message names the file and the layout
    with pytest.raises(CheckpointError, match=r"autoencoder_v1\.pt.*diffusion UNet.*missing.*conv_in"):
        load_maisi(vae_file, unet_file, TINY)
    # one key renamed
    unet, vae = nets
    state = dict(unet.state_dict())
    state["renamed.weight"] = state.pop("conv_in.conv.weight")
    torch.save({"unet_state_dict": state, "scale_factor": torch.tensor(1.0)}, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"renamed\.pt.*1 missing.*conv_in\.conv\.weight.*1 unexpected"):
        load_maisi(tmp_path / "renamed.pt", vae_file, TINY)
    # strict=False accepts extra tensors (as MAISI's loader) but never a missing one
    state = dict(unet.state_dict(), **{"extra.weight": torch.zeros(2)})
    torch.save({"unet_state_dict": state, "scale_factor": torch.tensor(1.0)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. \['extra\.weight'\]"):
        load_maisi(tmp_path / "extra.pt", vae_file, TINY)
    assert load_maisi(tmp_path / "extra.pt", vae_file, TINY, strict=False).scale_factor == 1.0
    with pytest.raises(CheckpointError, match="1 missing"):
        load_maisi(tmp_path / "renamed.pt", vae_file, TINY, strict=False)
    # another architecture: shapes do not fit
    with pytest.raises(CheckpointError, match="another shape"):
        load_maisi(unet_file, vae_file, MaisiConfig.tiny(unet_channels=(8, 16, 16, 64)))
    # a plain state dict has no scale factor: the config must give it
    torch.save(unet.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="scale_factor"):
        load_maisi(tmp_path / "plain.pt", vae_file, TINY)
    loaded = load_maisi(tmp_path / "plain.pt", vae_file, MaisiConfig.tiny(scale_factor=0.5))
    assert loaded.scale_factor == 0.5
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_maisi(tmp_path / "junk.pt", vae_file, TINY)
