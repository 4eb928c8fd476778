"""Run profiles, seeds and device selection."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bnlib
from bnlib.config import PROFILES, run_profile, seed_everything
from bnlib.device import available_devices, get_device, resolve_device


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_profile_from_environment(monkeypatch, name):
    monkeypatch.setenv("BNLIB_PROFILE", name)
    profile = run_profile()
    assert profile == PROFILES[name]
    assert "BNLIB_PROFILE" in profile.reason


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BNLIB_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"unknown run profile 'fast'.*smoke, quick, full"):
        run_profile()


def test_unset_profile_depends_on_the_accelerator(monkeypatch):
    monkeypatch.delenv("BNLIB_PROFILE", raising=False)
    monkeypatch.setattr("bnlib.device.accelerator_available", lambda: False)
    assert run_profile().name == "quick" and "no GPU" in run_profile().reason
    monkeypatch.setattr("bnlib.device.accelerator_available", lambda: True)
    assert run_profile().name == "full" and "GPU" in str(run_profile())


def test_profiles_grow_and_full_uses_the_source_settings():
    smoke, quick, full = PROFILES["smoke"], PROFILES["quick"], PROFILES["full"]
    assert smoke.train_size < quick.train_size < full.train_size == 60_000
    assert full.test_size == 10_000 and full.n_seeds >= 5 and full.epochs(25) == 25
    assert smoke.epochs(10) == 1 and quick.epochs(10) <= 3 and quick.epochs(2) == 2
    assert smoke.n_seeds >= 2, "even smoke runs every comparison over at least two seeds"
    assert quick.n_seeds >= 5, "with two seeds the 95% t-factor is 12.7: nearly nothing can be decided"
    with pytest.raises(ValueError, match="positive integer"):
        full.epochs(0)


def test_seed_everything_makes_runs_repeatable():
    seed_everything(7)
    first = (np.random.rand(3), torch.rand(3))  # noqa: NPY002  (the legacy global RNG is what is seeded)
    seed_everything(7)
    second = (np.random.rand(3), torch.rand(3))  # noqa: NPY002
    assert np.array_equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_seed_everything_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="seed must be an integer"):
        seed_everything(bad)


def test_seed_everything_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_everything(-1)


def test_get_device_defaults_to_the_best_available(monkeypatch):
    monkeypatch.delenv("BNLIB_DEVICE", raising=False)
    assert get_device().type == available_devices()[0]
    assert available_devices()[-1] == "cpu"


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (True, False, "cuda"), (False, False, "cpu")]
)
def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv("BNLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert get_device() == torch.device(expected)
    assert available_devices()[-1] == "cpu" and len(available_devices()) == 1 + cuda + mps


def test_get_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv("BNLIB_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_unavailable_device_lists_the_available_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"not available here; available: \[.*'cpu'\]"):
        get_device("cuda")
    monkeypatch.setenv("BNLIB_DEVICE", "cuda")
    with pytest.raises(ValueError, match="BNLIB_DEVICE"):
        get_device()


def test_nonsense_device_name():
    with pytest.raises(ValueError, match="not a device name"):
        get_device("gpu-please")


def test_resolve_device_argument_then_model_then_get_device(monkeypatch):
    from torch import nn

    monkeypatch.delenv("BNLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # get_device() would now say cuda
    on_meta = nn.Linear(2, 2, device="meta")
    assert resolve_device(on_meta, "cpu") == torch.device("cpu")  # 1. the explicit argument
    assert resolve_device(on_meta) == torch.device("meta")  # 2. the model's first parameter
    assert resolve_device(nn.BatchNorm1d(2, affine=False, device="meta")) == torch.device("meta")  # ... or buffer
    assert resolve_device(nn.ReLU()) == torch.device("cuda")  # 3. no tensors: get_device()
    assert resolve_device() == torch.device("cuda")
    monkeypatch.setenv("BNLIB_DEVICE", "cpu")  # which honours BNLIB_DEVICE
    assert resolve_device(nn.ReLU()) == torch.device("cpu") and resolve_device() == torch.device("cpu")
    assert resolve_device(on_meta) == torch.device("meta")  # but the model's device comes first


def test_resolve_device_refuses_bad_input(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="not available here"):
        resolve_device(None, "cuda")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device(None, "gpu-please")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or None, got str"):
        resolve_device("model")


def test_import_is_fast_and_does_not_import_tensorflow():
    code = "import sys, time; t = time.perf_counter(); import bnlib; dt = time.perf_counter() - t; print(dt, 'tensorflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    seconds, tensorflow_loaded, torch_loaded = float(out[0]), out[1] == "True", out[2] == "True"
    assert not tensorflow_loaded and not torch_loaded
    assert seconds < 2.0, f"import bnlib took {seconds:.2f} s"


# The submodules `import bnlib` loads for its top-level names; every other one waits for first use.
EAGER = {"config", "device", "data", "preprocessing", "notebook"}
HEAVY = ("torch", "tensorflow", "keras", "matplotlib", "pandas", "seaborn", "scipy")


def loaded_heavy_modules(code, pythonpath=None):
    """Run ``code`` in a fresh interpreter; the lazy bnlib submodules and heavy libraries it left in sys.modules."""
    lazy = sorted(f"bnlib.{name}" for name in bnlib._SUBMODULES - EAGER)
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {[*lazy, *HEAVY]!r} if m in sys.modules))"
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": str(pythonpath)}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=pythonpath, check=True
    )
    return result.stdout.split()


def test_submodules_load_lazily():
    """`import bnlib` in a fresh process loads no lazy submodule and no heavy library; first use loads one."""
    assert {"layers", "training", "probes", "plotting", "keras", "inference"} <= bnlib._SUBMODULES - EAGER
    assert loaded_heavy_modules("import bnlib") == []
    after_use = loaded_heavy_modules("import bnlib\nbnlib.layers.BatchNorm(3)")
    assert {"bnlib.layers", "torch"} <= set(after_use) and "bnlib.keras" not in after_use
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bnlib.nope  # noqa: B018


def test_lazy_import_check_catches_an_eager_import(tmp_path):
    """The check above fails for a copy of bnlib whose __init__ imports one submodule eagerly."""
    copy = tmp_path / "bnlib"
    shutil.copytree(Path(bnlib.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text() + "\nfrom bnlib import probes  # eager, as a careless edit would do\n")
    loaded = loaded_heavy_modules("import bnlib\nassert bnlib.__file__.startswith(" + repr(str(copy)) + ")", tmp_path)
    assert {"bnlib.probes", "torch"} <= set(loaded)


def test_version_is_the_package_metadata_and_pyproject_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert bnlib.__version__ == pyproject["project"]["version"] == importlib.metadata.version("bnlib")


def test_version_of_a_checkout_that_was_never_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert bnlib._version() == importlib.metadata.distribution("bnlib").metadata["Version"]  # read from pyproject.toml


def test_describe_environment_names_device_and_profile(monkeypatch):
    monkeypatch.setenv("BNLIB_PROFILE", "smoke")
    text = bnlib.describe_environment()
    assert "device: cpu" in text or "device: cuda" in text or "device: mps" in text
    assert "run profile: smoke" in text
