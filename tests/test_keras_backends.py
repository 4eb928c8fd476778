"""bnlib.keras on any Keras 3 backend: the book's Keras models give TensorFlow's outputs on torch, and fit trains there.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so each backend
runs in its own subprocess. The TensorFlow process builds every model of the
book (sources A, B, C and LeNet-5's twin, with and without batch norm, both
placements), gives it random weights (BN's moving statistics, gamma and beta
included, so inference mode is not the identity) and saves weights, inputs and
outputs; the torch process, with TensorFlow blocked as if it were not
installed, builds the same models, loads the same weights and computes the
same outputs in inference mode (``training=False``) and training mode
(``training=True``, batch statistics; the moving statistics it updates are
compared too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np

    backend, folder = sys.argv[1], sys.argv[2]
    if backend != "tensorflow":  # as on a machine without TensorFlow: every import of it fails

        import importlib.machinery

        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return importlib.machinery.ModuleSpec(name, self)
                return None

            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)", name=spec.name)

            def exec_module(self, module):  # never reached
                raise ModuleNotFoundError(module.__name__)

        sys.meta_path.insert(0, NoTensorFlow())
    os.environ["KERAS_BACKEND"] = backend
    import bnlib.keras as bk

    keras = bk.import_keras()
    assert keras.backend.backend() == backend == bk.backend_name(), (keras.backend.backend(), backend)
    assert (backend == "tensorflow") == ("tensorflow" in sys.modules)

    MODELS = {}
    for bn, placement in ((False, "after"), (True, "after"), (True, "before")):
        tag = f"{'bn_' + placement if bn else 'plain'}"
        for name, builder in (("a", bk.model_a), ("b", bk.model_b), ("c_dense", bk.model_c_dense), ("c_conv", bk.model_c_conv)):
            MODELS[f"{name}_{tag}"] = lambda builder=builder, bn=bn, placement=placement: builder(
                batch_norm=bn, placement=placement, seed=0
            )
        MODELS[f"lenet5_{tag}"] = lambda bn=bn, placement=placement: bk.keras_lenet5(
            bn, norm_position=placement, activation="relu", pool="max", seed=0
        )

    weights_file = os.path.join(folder, "weights.npz")
    first = not os.path.exists(weights_file)
    rng = np.random.default_rng(0)
    weights, results = {}, {}
    saved = None if first else np.load(weights_file)
    for key, build in MODELS.items():
        model = build()
        shape = tuple(model.input_shape[1:])
        if first:
            values = []
            for layer in model.layers:
                for i, w in enumerate(layer.get_weights()):
                    if type(layer).__name__ == "BatchNormalization":  # gamma, beta, moving mean, moving variance
                        w = (1 + 0.2 * rng.standard_normal(w.shape), 0.2 * rng.standard_normal(w.shape),
                             0.3 * rng.standard_normal(w.shape), 0.5 + rng.random(w.shape))[i]
                    else:  # He-scaled, so activations stay of order one
                        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
                        w = rng.standard_normal(w.shape) * (np.sqrt(2 / fan_in) if w.ndim > 1 else 0.1)
                    values.append(np.asarray(w, dtype=np.float32))
            x = rng.random((6, *shape), dtype=np.float32)
            for i, v in enumerate(values):
                weights[f"{key}/w{i}"] = v
            weights[f"{key}/x"] = x
        else:
            count = len(model.get_weights())
            values = [saved[f"{key}/w{i}"] for i in range(count)]
            x = saved[f"{key}/x"]
        model.set_weights(values)
        results[f"{key}/inference"] = keras.ops.convert_to_numpy(model(x, training=False))
        results[f"{key}/training"] = keras.ops.convert_to_numpy(model(x, training=True))
        moving = [keras.ops.convert_to_numpy(w) for layer in model.layers
                  if type(layer).__name__ == "BatchNormalization" for w in (layer.moving_mean, layer.moving_variance)]
        for i, m in enumerate(moving):
            results[f"{key}/moving{i}"] = m
    stream = np.random.default_rng(1).normal(5.0, 2.0, size=(50, 16, 3)).astype(np.float32)
    results["trajectory/moving"] = bk.moving_mean_trajectory(keras.layers.BatchNormalization(), stream, feature=2)
    if first:
        np.savez(weights_file, **weights)
    np.savez(os.path.join(folder, f"outputs_{backend}.npz"), **results)

    # A short training run through bnlib.keras.fit on this backend, and its divergence guard.
    import bnlib

    train = bnlib.load_mnist().subset(96, 8).keras("train")
    history = bk.fit(bk.model_a, train, validation_split=0.25, epochs=1, batch_size=24, seed=0, progress=False)
    report = {"meta": {k: history.meta[k] for k in ("backend", "device", "framework")},
              "batch_loss": history.batch_loss, "val_loss": history.val_loss, "train_loss": history.train_loss}
    try:
        bk.fit(bk.model_c_conv, train, epochs=2, batch_size=24, seed=0, progress=False, learning_rate=1e30)
    except bk.TrainingDivergedError as error:
        report["diverged"] = [error.epoch, error.step, str(error.loss), error.learning_rates, error.history.epochs]
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    print("REPORT" + json.dumps(report))
    """
)


def run_worker(backend: str, folder: Path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", WORKER, backend, str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"the {backend} worker failed:\n{result.stderr[-4000:]}"
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras_backends")
    reports = {backend: run_worker(backend, folder) for backend in ("tensorflow", "torch")}  # TF saves the weights
    outputs = {backend: dict(np.load(folder / f"outputs_{backend}.npz")) for backend in reports}
    return reports, outputs


def test_torch_backend_gives_tensorflows_outputs_for_the_same_weights(runs):
    _, outputs = runs
    tf_out, torch_out = outputs["tensorflow"], outputs["torch"]
    assert set(tf_out) == set(torch_out)
    models = {key.split("/")[0] for key in tf_out}
    assert len(models) == 16  # 5 architectures x (no BN, BN after, BN before), and moving_mean_trajectory
    worst = {}
    for key in sorted(tf_out):
        a, b = tf_out[key], torch_out[key]
        assert a.shape == b.shape, key
        assert np.isfinite(a).all(), key
        # float32 through up to 9216-term sums: agreement to ~1e-5 of the output's scale, not bit for bit.
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5 * scale, err_msg=key)
        model, kind = key.split("/", 1)
        kind = f"{model.rsplit('_', 2)[0] if 'bn_' in model else model.rsplit('_', 1)[0]} {kind.rstrip('0123456789')}"
        worst[kind] = max(worst.get(kind, 0.0), float(np.abs(a - b).max()) / scale)
    print("\nlargest |TF - torch| / max(1, |TF|):", ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
    # The comparison has teeth: training mode (batch statistics) differs from inference mode (moving ones).
    assert not np.allclose(tf_out["a_bn_after/inference"], tf_out["a_bn_after/training"], atol=1e-3)


def test_fit_trains_on_the_torch_backend_and_stops_on_a_nan(runs):
    reports, _ = runs
    torch_run, tf_run = reports["torch"], reports["tensorflow"]
    assert torch_run["meta"]["backend"] == "torch" and torch_run["meta"]["framework"] == "keras"
    assert tf_run["meta"]["backend"] == "tensorflow"
    assert torch_run["tensorflow_imported"] is False and tf_run["tensorflow_imported"] is True
    assert "cpu" in torch_run["meta"]["device"].lower() or "cuda" in torch_run["meta"]["device"]
    assert len(torch_run["batch_loss"]) == 3  # 96 images, 25% held out, batches of 24
    assert np.isfinite(torch_run["batch_loss"]).all() and np.isfinite(torch_run["val_loss"]).all()
    # Same seed, same data, other backend: the same start (its random streams differ, so the weights do too).
    assert 1.0 < torch_run["batch_loss"][0] < 5.0 and 1.0 < tf_run["batch_loss"][0] < 5.0
    for run in (torch_run, tf_run):
        epoch, step, loss, learning_rate, finished = run["diverged"]
        assert (epoch, loss, learning_rate, finished) == (1, "nan", [1e30], 0) and step >= 1
