"""The VAE's maths and its pictures, shared by the notebook and the tests (torch, torchvision, the standard
library): the loss terms, `vae_loss`, `iwae_loss`, `iwae_dreg_loss`, `learning_rate`; the evaluation's bound,
active units, KL per dimension; `save_grid` and `save_figure`, written through `atomic_path` (a temporary
file renamed into place, so a stopped run never leaves a half-written one)."""

import contextlib
import errno
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli, Normal

IMAGE_SIZE = 28 * 28
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "binarized")
OBJECTIVES = ("elbo", "iwae")
GRADIENTS = ("plain", "dreg")  # dreg: the doubly reparameterised encoder gradient of iwae
LR_SCHEDULES = ("constant", "burda")


# ---- the loss --------------------------------------------------------------------------------
def reconstruction_nll(logits, x, likelihood="bernoulli"):
    """-log p(x | z) per pixel, from the decoder's logits: binary cross-entropy (bernoulli, binarized), plus
    the log-normaliser that makes it a density on [0, 1] for continuous_bernoulli (Loaiza-Ganem et al. 2019)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}")
    if likelihood == "continuous_bernoulli":
        return -ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def kl_to_standard_normal(mu, log_var):
    """KL(N(mu, exp(log_var)) || N(0, 1)) per latent dimension: -0.5 (1 + log_var - mu^2 - exp(log_var))."""
    return -0.5 * (1 + log_var - mu.pow(2) - log_var.exp())


def vae_loss(logits, x, mu, log_var, likelihood="bernoulli", kl_weight=1.0):
    """The negative ELBO summed over the batch, as `(total, reconstruction, kl)`; `kl_weight` multiplies the
    KL term in `total` (beta, or a warm-up's rising weight; 1 is the ELBO itself, the spec)."""
    if logits.dim() != 2 or logits.shape != x.shape:
        raise ValueError(
            f"logits and x must both be (batch, pixels) and equal; got {tuple(logits.shape)} and "
            f"{tuple(x.shape)}. Flatten images with x.view(len(x), -1)."
        )
    if mu.dim() != 2 or mu.shape != log_var.shape or len(mu) != len(x):
        raise ValueError(
            f"mu and log_var must both be (batch, latent) with the batch of x ({len(x)}); got "
            f"{tuple(mu.shape)} and {tuple(log_var.shape)}."
        )
    recon = reconstruction_nll(logits, x, likelihood).sum()
    kl = kl_to_standard_normal(mu, log_var).sum()
    return recon + (kl if kl_weight == 1 else kl_weight * kl), recon, kl


def kl_weight(beta, warmup_epochs, progress):
    """The KL weight after `progress` epochs (2.5 is mid-epoch 3): linearly from 0 to `beta` over the first
    `warmup_epochs` (Bowman et al. 2016; Sonderby et al. 2016), then `beta` (Higgins et al. 2017)."""
    return beta if warmup_epochs == 0 else beta * min(1.0, progress / warmup_epochs)


def learning_rate(lr, schedule, epoch):
    """The learning rate of epoch 1, 2, ...: `lr` ("constant", the spec), or "burda": Burda et al. (2016, sec. 5)
    train in stages i = 0, 1, ... of 3**i epochs at lr * 10**(-i/7) (epoch 1 is stage 0, epochs 2-4 stage 1,
    5-13 stage 2, ...). A function of the epoch alone, so a resumed run gets the same rates."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")
    if schedule == "constant":
        return lr
    stage = 0
    while epoch > (3 ** (stage + 1) - 1) // 2:  # epochs in stages 0..stage: 1 + 3 + ... + 3**stage
        stage += 1
    return lr * 10 ** (-stage / 7)


def log_importance_weights(encode, decode_logits, x, k, likelihood="bernoulli", generator=None):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for k reparameterised draws z_i ~ q(z|x), as a
    (k, batch) tensor that carries gradients."""
    mu, log_var = encode(x)
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    z = posterior.loc + eps * posterior.scale  # (k, batch, latent)
    logits = decode_logits(z.reshape(-1, z.shape[-1])).reshape(k, len(x), -1)
    log_px_z = -reconstruction_nll(logits, x.expand(k, -1, -1), likelihood).sum(-1)
    return log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)


def iwae_loss(encode, decode_logits, x, k, likelihood="bernoulli", generator=None):
    """Burda et al.'s objective: minus the k-sample importance-weighted bound, summed over the batch (k = 1:
    the ELBO with the KL estimated from the same draw instead of in closed form)."""
    log_w = log_importance_weights(encode, decode_logits, x, k, likelihood, generator)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k)).sum()


def iwae_dreg_loss(encode, decode_logits, x, k, likelihood="bernoulli", generator=None):
    """`iwae_loss`'s value and the decoder's gradient, with Tucker et al.'s (2019) doubly reparameterised gradient
    for the encoder: sum_i w~_i^2 d log w_i / d z_i dz_i / dphi, log q at stopped parameters (no score term)."""
    mu, log_var = encode(x)
    scale = torch.exp(0.5 * log_var)
    z = mu + torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype) * scale
    logits = decode_logits(z.reshape(-1, z.shape[-1])).reshape(k, len(x), -1)
    log_px_z = -reconstruction_nll(logits, x.expand(k, -1, -1), likelihood).sum(-1)
    log_w = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu.detach(), scale.detach()).log_prob(z).sum(-1)
    weights = torch.softmax(log_w.detach(), dim=0)  # w~_i, normalised over the k draws
    if z.requires_grad:  # the encoder's path through z_i: its gradient, already w~_i d log w_i, times w~_i again
        z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    surrogate = -(weights * log_w).sum()  # the decoder's gradient: IWAE's, sum_i w~_i d log w_i / d theta
    value = -(torch.logsumexp(log_w.detach(), dim=0) - math.log(k)).sum()
    return value + surrogate - surrogate.detach()


# ---- evaluation ------------------------------------------------------------------------------
def importance_weighted_bound(encode, decode_logits, x, k, likelihood="bernoulli", generator=None, max_rows=4096):
    """Per-image bound log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2015, eq. 8);
    k = 1 is the ELBO. `max_rows` (images x k per chunk) bounds the memory used."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bound = torch.empty(len(x), device=x.device, dtype=x.dtype)
    step = max(1, max_rows // k)
    for start in range(0, len(x), step):  # results go into `bound`: no tensor is kept per chunk
        log_w = log_importance_weights(encode, decode_logits, x[start : start + step], k, likelihood, generator)
        bound[start : start + step] = torch.logsumexp(log_w, dim=0) - math.log(k)
    return bound


def active_units(mu, threshold=0.01) -> int:
    """Latent dimensions whose posterior mean varies across images: Var_x[E_q(z|x) z_d] > threshold."""
    return int((mu.var(dim=0) > threshold).sum())


def kl_per_dimension(mu, log_var):
    """KL(q(z_d|x) || N(0, 1)) per latent dimension, averaged over images."""
    return kl_to_standard_normal(mu, log_var).mean(dim=0)


def mean_and_stderr(values):
    """Mean of per-image values and its standard error."""
    values = values.double()
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), stderr


def manifold_grid(n=20):
    """Kingma & Welling's manifold: z = Phi^-1(u) on an n x n grid of u in (0, 1)^2, as (n * n, 2) in reading
    order for `save_grid(..., nrow=n)` (z_1 rises along a row, z_2 falls from the top row to the bottom)."""
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n  # the open unit interval, evenly
    z = Normal(0.0, 1.0).icdf(u)
    z_1, z_2 = torch.meshgrid(z, z.flip(0), indexing="xy")
    return torch.stack([z_1.reshape(-1), z_2.reshape(-1)], dim=1)


# ---- pictures, written safely ----------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path):
    """A temporary path next to `path`, renamed onto it if the block succeeds; a killed earlier write's
    leftovers are removed first, and a full disk raises an `OSError` that names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on the device to write {path}") from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> Path:
    """Images (N x 784 or N x 1 x 28 x 28, in [0, 1]) as one PNG grid, by `torchvision.utils.save_image`."""
    from torchvision.utils import save_image

    if images.dim() == 2 and images.shape[1] == IMAGE_SIZE:
        images = images.view(-1, 1, 28, 28)
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"save_grid expects images of shape (N, 784) or (N, 1, 28, 28); got {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("save_grid got no images")
    with atomic_path(path) as tmp:
        save_image(images.detach().float().cpu(), tmp, nrow=nrow, format="png")
    return Path(path)


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)
