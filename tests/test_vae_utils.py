"""vae_utils: the loss and the bounds against torch.distributions, the grids and the safe writes."""

import errno
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal, kl_divergence

import vae_utils


def batch(seed=0, n=16, pixels=784, latent=20):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, pixels, generator=g)
    x = torch.rand(n, pixels, generator=g)
    mu = torch.randn(n, latent, generator=g)
    log_var = torch.randn(n, latent, generator=g)
    return logits, x, mu, log_var


def test_loss_matches_torch_distributions():
    logits, x, mu, log_var = batch()
    total, recon, kl = vae_utils.vae_loss(logits, x, mu, log_var)
    expected_recon = -Bernoulli(logits=logits, validate_args=False).log_prob(x).sum()
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    expected_kl = kl_divergence(posterior, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum()
    torch.testing.assert_close(recon, expected_recon, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(total, recon + kl)


def test_loss_equals_the_spec_sigmoid_plus_bce():
    logits, x, mu, log_var = batch(seed=1)
    logits = logits.clamp(-10, 10)  # where sigmoid + log are still exact in float32
    _, recon, _ = vae_utils.vae_loss(logits, x, mu, log_var)
    spec = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
    torch.testing.assert_close(recon, spec, rtol=1e-4, atol=1e-2)


def test_kl_is_zero_for_the_prior_itself():
    logits, x, _, _ = batch()
    zeros = torch.zeros(16, 20)
    _, _, kl = vae_utils.vae_loss(logits, x, zeros, zeros)
    assert kl.item() == 0.0


def test_continuous_bernoulli_adds_its_log_normaliser():
    logits, x, mu, log_var = batch(seed=2)
    logits = logits.clamp(-5, 5)
    _, recon, _ = vae_utils.vae_loss(logits, x, mu, log_var, "continuous_bernoulli")
    lam = torch.sigmoid(logits).double()
    # C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), the normaliser of Loaiza-Ganem & Cunningham
    log_norm = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = -(x * torch.log(lam) + (1 - x) * torch.log1p(-lam) + log_norm).sum()
    torch.testing.assert_close(recon.double(), expected, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(
        recon, -ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x).sum(), rtol=1e-5, atol=1e-2
    )


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        (((16, 784), (16, 28, 28), (16, 20), (16, 20)), "Flatten images"),
        (((16, 784), (16, 784), (16, 20), (16, 10)), "mu and log_var"),
        (((16, 784), (16, 784), (8, 20), (8, 20)), "batch of x"),
    ],
)
def test_wrong_shapes_raise_a_clear_error(shapes, words):
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match=words):
        vae_utils.vae_loss(*tensors)


def test_an_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        vae_utils.vae_loss(*batch(), likelihood="gaussian")


def test_save_grid_writes_an_8x8_png(tmp_path):
    path = vae_utils.save_grid(torch.rand(64, 784), tmp_path / "samples.png")
    with Image.open(path) as image:
        assert image.size == (242, 242)  # 8 x 28 pixels + 9 x 2 of padding
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # no temporary file left


def test_save_grid_rejects_images_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        vae_utils.save_grid(torch.rand(64, 100), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = vae_utils.save_grid(torch.rand(4, 784), tmp_path / "samples.png")
    before = path.read_bytes()

    def broken_save_image(tensor, fp, **kwargs):
        Path(fp).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr("torchvision.utils.save_image", broken_save_image)
    with pytest.raises(OSError, match="disk full"):
        vae_utils.save_grid(torch.rand(4, 784), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]


# ---- evaluation -----------------------------------------------------------------------------
def tiny_vae(seed=0, latent=4, pixels=784):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(pixels, 2 * latent, generator=g) * 0.05
    dec = torch.randn(latent, pixels, generator=g)

    def encode(x):
        h = x @ enc
        return h[:, :latent], h[:, latent:] - 1.0

    def decode_logits(z):
        return z @ dec

    return encode, decode_logits


def test_iw_bound_with_one_sample_is_the_elbo_for_the_same_noise():
    encode, decode_logits = tiny_vae()
    x = torch.rand(32, 784, generator=torch.Generator().manual_seed(3))
    bound = vae_utils.importance_weighted_bound(encode, decode_logits, x, 1, generator=torch.Generator().manual_seed(7))
    # The same noise, by hand: log p(x|z) + log p(z) - log q(z|x) with closed-form densities.
    mu, log_var = encode(x)
    eps = torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(7))[0]
    z = mu + eps * torch.exp(0.5 * log_var)
    p = torch.sigmoid(decode_logits(z)).double()
    log_px_z = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
    log_pz = (-0.5 * z.double() ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * eps.double() ** 2 - 0.5 * log_var.double() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(bound.double(), log_px_z + log_pz - log_qz, rtol=1e-4, atol=1e-2)


def test_iw_bound_with_one_sample_averages_to_minus_the_loss():
    encode, decode_logits = tiny_vae()
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(4))
    x = x.repeat(500, 1)  # many draws per image
    bound = vae_utils.importance_weighted_bound(encode, decode_logits, x, 1, generator=torch.Generator().manual_seed(0))
    mu, log_var = encode(x[:8])
    # ELBO with the analytic KL, averaged over the same 8 images (reconstruction by Monte Carlo)
    logits = decode_logits(
        mu.repeat(500, 1)
        + torch.randn(4000, 4, generator=torch.Generator().manual_seed(1)) * torch.exp(0.5 * log_var.repeat(500, 1))
    )
    total, _, _ = vae_utils.vae_loss(logits, x, mu.repeat(500, 1), log_var.repeat(500, 1))
    assert abs(bound.mean().item() - (-total.item() / len(x))) < 3 * bound.std().item() / math.sqrt(len(x)) + 0.5


def test_iw_bound_grows_with_k():
    encode, decode_logits = tiny_vae(seed=5)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(6))
    means = [
        vae_utils.importance_weighted_bound(encode, decode_logits, x, k, generator=torch.Generator().manual_seed(k))
        .mean()
        .item()
        for k in (1, 10, 100)
    ]
    assert means[0] < means[1] < means[2], means


def test_active_units_counts_only_dimensions_that_vary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 10, generator=g)
    weights = torch.zeros(10, 8)
    weights[0, 1] = 1.0  # variance about 1
    weights[3, 4] = 0.3  # variance about 0.09
    weights[5, 6] = 0.03  # variance about 0.0009: below the 0.01 threshold
    mu = x @ weights + 2.0  # an offset is not variation
    assert vae_utils.active_units(mu) == 2
    assert vae_utils.active_units(mu, threshold=0.0001) == 3


def test_kl_per_dimension_sums_to_the_kl():
    _, _, mu, log_var = batch()
    per_dim = vae_utils.kl_per_dimension(mu, log_var)
    _, _, kl = vae_utils.vae_loss(*batch())
    assert per_dim.shape == (20,)
    torch.testing.assert_close(per_dim.sum() * len(mu), kl, rtol=1e-5, atol=1e-3)


def test_the_kl_term_is_one_function_checked_against_torch_distributions():
    _, _, mu, log_var = batch(seed=3)
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    expected = kl_divergence(posterior, Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(vae_utils.kl_to_standard_normal(mu, log_var), expected, rtol=1e-5, atol=1e-5)


def test_the_reconstruction_term_is_bernoulli_log_prob_per_pixel():
    logits, x, _, _ = batch(seed=4)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x)
    torch.testing.assert_close(vae_utils.reconstruction_nll(logits, x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae_utils.reconstruction_nll(logits, x, "binarized"), expected, rtol=1e-5, atol=1e-5)


def test_a_stale_temporary_file_from_a_killed_write_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".samples.png.abc123.tmp"
    stale.write_bytes(b"half a png, left by a killed run")
    vae_utils.save_grid(torch.rand(4, 784), tmp_path / "samples.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.png"]


def test_a_full_disk_names_the_file_and_says_there_is_no_space_left(tmp_path, monkeypatch):
    def no_space(tensor, fp, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torchvision.utils.save_image", no_space)
    with pytest.raises(OSError, match=r"No space left on the device to write .*samples\.png"):
        vae_utils.save_grid(torch.rand(4, 784), tmp_path / "samples.png")
    assert list(tmp_path.iterdir()) == []


def test_the_manifold_grid_is_the_normal_icdf_of_a_regular_grid_in_the_open_unit_square():
    z = vae_utils.manifold_grid(20)
    u = (torch.arange(20) + 0.5) / 20
    quantiles = Normal(0.0, 1.0).icdf(u)
    assert z.shape == (400, 2)
    torch.testing.assert_close(z[:20, 0], quantiles)  # z_1 rises along a row
    torch.testing.assert_close(z[::20, 1], quantiles.flip(0))  # z_2 falls from the top row down
    assert torch.isfinite(z).all() and (u > 0).all() and (u < 1).all()


def test_the_manifold_image_has_20_by_20_tiles(tmp_path):
    path = vae_utils.save_grid(torch.rand(400, 784), tmp_path / "manifold.png", nrow=20)
    with Image.open(path) as image:
        assert image.size == (20 * 28 + 21 * 2, 20 * 28 + 21 * 2)


# ---- training objectives ----------------------------------------------------------------------
def small_model(seed=0, latent=4, pixels=784):
    """A tiny encoder and decoder with parameters, so that gradients can be compared."""
    torch.manual_seed(seed)
    encoder, decoder = torch.nn.Linear(pixels, 2 * latent), torch.nn.Linear(latent, pixels)

    def encode(x):
        h = encoder(x)
        return h[:, :latent], h[:, latent:] - 1.0

    return encode, decoder, [*encoder.parameters(), *decoder.parameters()]


def gradients(loss, parameters):
    return torch.autograd.grad(loss, parameters)


def test_iwae_with_one_sample_is_the_elbo_for_the_same_noise_in_loss_and_gradients():
    encode, decode_logits, parameters = small_model()
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(1))
    iwae = vae_utils.iwae_loss(encode, decode_logits, x, 1, generator=torch.Generator().manual_seed(2))
    # The ELBO from the same draw, by torch.distributions: log p(x|z) + log p(z) - log q(z|x).
    mu, log_var = encode(x)
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    z = mu + torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(2))[0] * posterior.scale
    log_px_z = Bernoulli(logits=decode_logits(z), validate_args=False).log_prob(x).sum(-1)
    elbo = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)
    torch.testing.assert_close(iwae, -elbo.sum(), rtol=1e-5, atol=1e-3)
    for mine, theirs in zip(gradients(iwae, parameters), gradients(-elbo.sum(), parameters), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_iwae_with_one_sample_averages_to_the_analytic_elbo():
    encode, decode_logits, _ = small_model(seed=3)
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(4)).repeat(2000, 1)
    generator = torch.Generator().manual_seed(5)
    per_image = -vae_utils.log_importance_weights(encode, decode_logits, x, 1, generator=generator)[0]
    with torch.no_grad():
        mu, log_var = encode(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(6))
        logits = decode_logits(mu + eps * torch.exp(0.5 * log_var))
        analytic, _, _ = vae_utils.vae_loss(logits, x, mu, log_var)
    spread = per_image.detach().std().item() / math.sqrt(len(x))
    assert abs(per_image.mean().item() - analytic.item() / len(x)) < 4 * spread + 0.5


def test_iwae_with_k_samples_is_minus_the_log_mean_of_the_importance_weights():
    encode, decode_logits, _ = small_model(seed=7)
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(8))
    log_w = vae_utils.log_importance_weights(encode, decode_logits, x, 50, generator=torch.Generator().manual_seed(9))
    loss = vae_utils.iwae_loss(encode, decode_logits, x, 50, generator=torch.Generator().manual_seed(9))
    mean_of_weights = log_w.double().exp().mean(0).log()  # the definition, in double precision
    torch.testing.assert_close(loss.double(), -mean_of_weights.sum(), rtol=1e-5, atol=1e-3)
    assert log_w.shape == (50, 8)


def test_the_iwae_loss_is_below_the_elbo_loss_on_average_and_tightens_with_k():
    encode, decode_logits, _ = small_model(seed=10)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(11))
    losses = [
        vae_utils.iwae_loss(encode, decode_logits, x, k, generator=torch.Generator().manual_seed(k)).item()
        for k in (1, 10, 100)
    ]
    assert losses[0] > losses[1] > losses[2], losses


def test_the_kl_weight_multiplies_the_kl_term_only():
    logits, x, mu, log_var = batch(seed=5)
    total, recon, kl = vae_utils.vae_loss(logits, x, mu, log_var)
    weighted, recon_w, kl_w = vae_utils.vae_loss(logits, x, mu, log_var, kl_weight=4.0)
    assert torch.equal(recon, recon_w) and torch.equal(kl, kl_w)
    torch.testing.assert_close(weighted, recon + 4.0 * kl)
    assert torch.equal(total, recon + kl)  # weight 1: the ELBO itself, bit for bit


@pytest.mark.parametrize(
    ("beta", "warmup", "progress", "weight"),
    [(1.0, 0, 0.0, 1.0), (4.0, 0, 0.3, 4.0), (1.0, 10, 0.0, 0.0), (1.0, 10, 2.5, 0.25), (2.0, 10, 5.0, 1.0),
     (1.0, 10, 10.0, 1.0), (1.0, 10, 17.0, 1.0)],
)  # fmt: skip
def test_the_kl_weight_rises_linearly_over_the_warm_up_then_stays_at_beta(beta, warmup, progress, weight):
    assert vae_utils.kl_weight(beta, warmup, progress) == pytest.approx(weight)


def test_the_burda_schedule_runs_stages_of_3_to_the_i_epochs_at_10_to_the_minus_i_over_7_of_the_rate():
    stages = [i for i in range(8) for _ in range(3**i)]  # Burda et al. 2016: 3**i passes in stage i, 3,280 in all
    assert len(stages) == 3280
    rates = [vae_utils.learning_rate(1e-3, "burda", epoch) for epoch in range(1, 3281)]
    assert rates == pytest.approx([1e-3 * 10 ** (-i / 7) for i in stages], rel=1e-12)
    assert rates[-1] == pytest.approx(1e-4)  # ten times lower after the last stage begins


def test_the_constant_schedule_is_the_spec_rate_every_epoch_and_a_bad_one_is_refused():
    assert {vae_utils.learning_rate(1e-3, "constant", epoch) for epoch in (1, 2, 500)} == {1e-3}
    with pytest.raises(ValueError, match="schedule must be one of constant, burda; got 'cosine'"):
        vae_utils.learning_rate(1e-3, "cosine", 1)


# ---- the doubly reparameterised gradient (Tucker et al. 2019), against its formula written out ----------
def linear_vae(seed=0):
    """A linear encoder and decoder in float64: (encode, decode_logits, encoder parameters, decoder parameters)."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.3 for shape in ((6, 3), (6, 3), (3, 6)))
    encoder, decoder = [a.requires_grad_(), b.requires_grad_()], [c.requires_grad_()]
    return (lambda x: (x @ a, x @ b)), (lambda z: z @ c), encoder, decoder


def draws_of(k, x, seed):
    """The noise the losses draw from a generator seeded with `seed`: (k, batch, latent)."""
    return torch.randn((k, len(x), 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


X = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))


def test_dreg_gives_the_encoder_the_papers_gradient_and_the_decoder_iwaes_for_the_same_draws():
    encode, decode_logits, encoder, decoder = linear_vae()
    k, seed = 5, 3
    dreg = vae_utils.iwae_dreg_loss(encode, decode_logits, X, k, generator=torch.Generator().manual_seed(seed))
    iwae = vae_utils.iwae_loss(encode, decode_logits, X, k, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(dreg, iwae)  # the same value: the bound
    *dreg_encoder, dreg_decoder = gradients(dreg, [*encoder, *decoder])
    iwae = vae_utils.iwae_loss(encode, decode_logits, X, k, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(dreg_decoder, gradients(iwae, decoder)[0])
    # The paper's eq. 7, written out: minus sum_i w~_i^2 d log w_i / d phi through z_i only (log q's parameters held).
    mu, log_var = encode(X)
    sd = torch.exp(0.5 * log_var)
    z = mu + draws_of(k, X, seed) * sd
    log_w = (Bernoulli(logits=decode_logits(z)).log_prob(X).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1)
             - Normal(mu.detach(), sd.detach()).log_prob(z).sum(-1))  # fmt: skip
    w = torch.softmax(log_w.detach(), dim=0)
    expected = [torch.zeros_like(p) for p in encoder]
    for i in range(k):
        for image in range(len(X)):
            for total, g in zip(
                expected, torch.autograd.grad(log_w[i, image], encoder, retain_graph=True), strict=True
            ):
                total -= w[i, image] ** 2 * g
    assert all(torch.allclose(got, want) for got, want in zip(dreg_encoder, expected, strict=True))


def test_dreg_with_one_draw_is_sticking_the_landing():
    encode, decode_logits, encoder, _ = linear_vae(1)
    dreg = vae_utils.iwae_dreg_loss(encode, decode_logits, X, 1, generator=torch.Generator().manual_seed(5))
    mu, log_var = encode(X)
    sd = torch.exp(0.5 * log_var)
    z = mu + draws_of(1, X, 5)[0] * sd  # Roeder et al. 2017: the ELBO with log q at stopped parameters
    stl = -(Bernoulli(logits=decode_logits(z)).log_prob(X).sum() + Normal(0.0, 1.0).log_prob(z).sum()
            - Normal(mu.detach(), sd.detach()).log_prob(z).sum())  # fmt: skip
    assert all(torch.allclose(a, b) for a, b in zip(gradients(dreg, encoder), gradients(stl, encoder), strict=True))


def test_dregs_encoder_gradient_averages_to_iwaes_over_many_draws():
    encode, decode_logits, encoder, _ = linear_vae(2)
    dreg, iwae = [], []
    for seed in range(400):
        for loss, into in ((vae_utils.iwae_dreg_loss, dreg), (vae_utils.iwae_loss, iwae)):
            value = loss(encode, decode_logits, X, 5, generator=torch.Generator().manual_seed(seed))
            into.append(torch.cat([g.flatten() for g in gradients(value, encoder)]))
    dreg, iwae = torch.stack(dreg), torch.stack(iwae)
    difference = dreg.mean(0) - iwae.mean(0)
    stderr = ((dreg.var(0) + iwae.var(0)) / len(dreg)).sqrt()
    assert (difference.abs() <= 4 * stderr + 1e-9).all()  # unbiased: the same expected gradient
    assert dreg.var(0).sum() < iwae.var(0).sum()  # and with less spread
