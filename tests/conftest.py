"""Shared fixtures. Tests never write into the repo: results go to temporary folders."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import vae_utils


def pytest_configure(config):
    # The notebook under nbval (and every kernel a test starts) runs the spec's defaults; only the
    # data folder may be chosen by the caller. Results go to a temporary folder, not results/.
    for key in [k for k in os.environ if k.startswith("VAE_") and k != "VAE_DATA_DIR"]:
        del os.environ[key]
    os.environ["VAE_RESULTS_DIR"] = tempfile.mkdtemp(prefix="vae-test-results-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.get("VAE_RESULTS_DIR", ""), ignore_errors=True)


class RunsCode:
    """Pickles to a call of os.system: loading it with plain pickle would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def mnist_root():
    """The real, verified MNIST (fetched once if needed, like the notebook does)."""
    root = Path(os.environ.get("VAE_DATA_DIR", REPO / "data"))
    if not root.is_absolute():
        root = REPO / root
    return vae_utils.ensure_mnist(root)


@pytest.fixture()
def mnist_copy(mnist_root, tmp_path):
    """A private copy of the four verified raw files, for tests that damage them."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in vae_utils.MNIST_MD5:
        shutil.copy(mnist_root / "MNIST" / "raw" / name, raw / name)
    return tmp_path
