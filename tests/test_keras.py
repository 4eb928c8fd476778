"""bnlib.keras: the source models, the trainer's History, the converters, the lazy TensorFlow import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bnlib
import bnlib.keras as bk


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


# --- importing ---------------------------------------------------------------------------------


def test_import_bnlib_and_bnlib_keras_do_not_import_tensorflow():
    result = run_python(
        """
        import sys
        import bnlib, bnlib.keras
        bnlib.keras.keras_momentum_from_torch(0.1)  # converters need no framework
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_tensorflow_the_builders_run_on_torch_and_the_tensorflow_pieces_say_how_to_install():
    result = run_python(
        """
        import os, sys
        os.environ.pop("KERAS_BACKEND", None)
        sys.modules["tensorflow"] = None  # what Python does for a package that is not installed
        import bnlib.keras
        model = bnlib.keras.model_a()
        print("built on", bnlib.keras.backend_name(), model.output_shape)
        for call in (bnlib.keras.require_keras, bnlib.keras.tensorflow_device):
            try:
                call()
            except ImportError as error:
                print("ImportError:", error)
            else:
                print("no error")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "built on torch (None, 10)"
    assert len(lines) == 3
    for line in lines[1:]:
        assert line.startswith("ImportError:") and 'pip install "bnlib[keras]"' in line


def test_missing_keras_says_how_to_install():
    result = run_python(
        """
        import os, sys
        os.environ.pop("KERAS_BACKEND", None)  # (the test process sets it once Keras is imported)
        sys.modules["tensorflow"] = sys.modules["keras"] = None  # neither installed
        import bnlib.keras
        for call in (bnlib.keras.model_a, bnlib.keras.keras_lenet5, bnlib.keras.import_keras):
            try:
                call()
            except ImportError as error:
                print("ImportError:", error)
            else:
                print("no error")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("ImportError:") and 'pip install "bnlib[keras]"' in line and "Keras 3" in line


def test_an_unknown_keras_backend_is_refused():
    result = run_python(
        """
        import os
        os.environ["KERAS_BACKEND"] = "numpy"
        import bnlib.keras
        try:
            bnlib.keras.import_keras()
        except ValueError as error:
            print("ValueError:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ValueError: KERAS_BACKEND='numpy'") and "tensorflow, torch, jax" in result.stdout


def test_the_default_backend_is_tensorflow_where_it_is_installed():
    keras = bk.import_keras()
    assert bk.backend_name() == keras.backend.backend() == "tensorflow"
    assert bk.keras_device() == bk.tensorflow_device()


# --- layout: every builder in one module; keras.datasets only behind bnlib.keras ----------------


def test_every_keras_model_builder_lives_in_one_module():
    from bnlib.keras import _models, porting

    builders = [bk.model_a, bk.model_b, bk.model_c_dense, bk.model_c_conv, bk.keras_lenet5]
    assert all(builder.__module__ == "bnlib.keras._models" for builder in builders)
    assert porting.keras_lenet5 is bk.keras_lenet5 is _models.keras_lenet5  # old import path still works
    assert set(bk.MODEL_BUILDERS.values()) <= set(builders)
    # porting converts; it builds nothing itself.
    assert not [
        name
        for name, value in vars(porting).items()
        if callable(value)
        and getattr(value, "__module__", "") == "bnlib.keras.porting"
        and name.startswith(("model_", "keras_lenet"))
    ]


def _imports_of(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_bnlib_keras_imports_keras_or_tensorflow():
    from pathlib import Path

    package = Path(bnlib.__file__).parent
    outside = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "keras" not in path.relative_to(package).parts[:1] and _imports_of(path) & {"keras", "tensorflow"}
    )
    assert outside == []
    uses = sorted(str(path.relative_to(package)) for path in package.rglob("*.py") if _uses_keras_datasets(path))
    assert uses == ["keras/_data.py"]


def _uses_keras_datasets(path) -> bool:
    """``keras.datasets`` in code (an import or an attribute), not in a comment or docstring."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.datasets"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("keras.datasets") for a in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "datasets" and ast.unparse(node.value) == "keras":
            return True
    return False


def test_load_mnist_reaches_the_keras_download_through_bnlib_keras(monkeypatch):
    import bnlib.data
    import bnlib.keras._data

    sentinel = {"x_train": np.zeros((1, 28, 28), np.uint8)}
    monkeypatch.setattr(bnlib.keras._data, "download_mnist", lambda: sentinel)
    assert bnlib.data._from_keras() is sentinel


# --- converters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("torch_m", "keras_m"), [(0.1, 0.9), (0.01, 0.99), (0.0, 1.0), (1.0, 0.0), (0.3, 0.7)])
def test_momentum_conversion_both_ways(torch_m, keras_m):
    assert bk.keras_momentum_from_torch(torch_m) == pytest.approx(keras_m, abs=1e-12)
    assert bk.torch_momentum_from_keras(keras_m) == pytest.approx(torch_m, abs=1e-12)


@pytest.mark.parametrize("bad", [None, -0.1, 1.5, float("nan")])
def test_momentum_out_of_range_is_a_value_error(bad):
    with pytest.raises(ValueError, match="momentum"):
        bk.keras_momentum_from_torch(bad)


def test_momentum_none_has_one_rule_refused_with_the_fix():
    """PyTorch's cumulative average (momentum=None) has no fixed Keras momentum: every converter refuses it."""
    for call in (lambda: bk.keras_momentum_from_torch(None), lambda: bk.keras_batchnorm_kwargs(momentum=None)):
        with pytest.raises(ValueError, match=r"cumulative.*set each batch norm's \.momentum to a number"):
            call()


@pytest.mark.parametrize("bad", ["0.1", True, [0.1]])
def test_momentum_of_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="momentum"):
        bk.torch_momentum_from_keras(bad)


def test_variance_conversion_matches_numpy_ddof():
    values = np.random.default_rng(0).normal(size=(37, 3))
    n = values.shape[0]
    np.testing.assert_allclose(
        bk.biased_variance(values.var(axis=0, ddof=1), n), values.var(axis=0, ddof=0), rtol=1e-12
    )
    np.testing.assert_allclose(bk.unbiased_variance(values.var(axis=0), n), values.var(axis=0, ddof=1), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        bk.biased_variance(1.0, 1)
    with pytest.raises(TypeError, match="integer"):
        bk.unbiased_variance(1.0, 2.5)


def test_batchnorm_kwargs_and_their_bad_input():
    assert bk.keras_batchnorm_kwargs() == {"momentum": 0.9, "epsilon": 1e-5, "center": True, "scale": True}
    assert bk.torch_batchnorm_kwargs() == {"momentum": 0.01, "eps": 1e-3, "affine": True}
    assert bk.TORCH_EPSILON == 1e-5 and bk.KERAS_EPSILON == 1e-3
    with pytest.raises(ValueError, match="affine"):
        bk.torch_batchnorm_kwargs(center=False, scale=True)
    with pytest.raises(ValueError, match="positive"):
        bk.keras_batchnorm_kwargs(eps=0.0)
    with pytest.raises(TypeError, match="affine"):
        bk.keras_batchnorm_kwargs(affine="yes")


def test_converted_layers_agree_with_the_real_frameworks():
    """Keras BatchNormalization built from torch settings tracks the same moving mean; variances differ by (n-1)/n."""
    import torch

    _, keras = bk.require_keras()
    assert keras.layers.BatchNormalization().epsilon == bk.KERAS_EPSILON
    assert keras.layers.BatchNormalization().momentum == bk.KERAS_MOMENTUM
    assert torch.nn.BatchNorm1d(3).eps == bk.TORCH_EPSILON and torch.nn.BatchNorm1d(3).momentum == bk.TORCH_MOMENTUM
    rng = np.random.default_rng(1)
    batches = [rng.normal(2.0, 3.0, size=(16, 3)).astype(np.float32) for _ in range(3)]
    torch_bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=1e-5)
    keras_bn = keras.layers.BatchNormalization(**bk.keras_batchnorm_kwargs(momentum=0.1, eps=1e-5))
    for batch in batches:
        torch_out = torch_bn(torch.from_numpy(batch)).detach().numpy()
        keras_out = np.asarray(keras_bn(batch, training=True))
        np.testing.assert_allclose(keras_out, torch_out, atol=1e-5)
    np.testing.assert_allclose(np.asarray(keras_bn.moving_mean), torch_bn.running_mean.numpy(), rtol=1e-5)
    # With momentum 1 (torch) = 0 (keras) the stored variance is the last batch's: unbiased vs biased.
    torch_bn = torch.nn.BatchNorm1d(3, momentum=1.0)
    keras_bn = keras.layers.BatchNormalization(**bk.keras_batchnorm_kwargs(momentum=1.0))
    torch_bn(torch.from_numpy(batches[0]))
    keras_bn(batches[0], training=True)
    np.testing.assert_allclose(
        np.asarray(keras_bn.moving_variance), bk.biased_variance(torch_bn.running_var.numpy(), 16), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(keras_bn.moving_variance), batches[0].var(axis=0), rtol=1e-5)


# --- builders ----------------------------------------------------------------------------------


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bn(c: int) -> tuple[int, int]:
    """(trainable, non-trainable) of a BatchNormalization over c channels: gamma, beta | moving mean, variance."""
    return 2 * c, 2 * c


def names(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


A_PLAIN = ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
A_AFTER = [
    "Conv2D",
    "BatchNormalization",
    "MaxPooling2D",
    "BatchNormalization",
    "Conv2D",
    "BatchNormalization",
    "MaxPooling2D",
    "BatchNormalization",
    "Flatten",
    "Dense",
    "BatchNormalization",
    "Dense",
]
A_BEFORE = [
    "Conv2D",
    "BatchNormalization",
    "ReLU",
    "MaxPooling2D",
    "BatchNormalization",
    "Conv2D",
    "BatchNormalization",
    "ReLU",
    "MaxPooling2D",
    "BatchNormalization",
    "Flatten",
    "Dense",
    "BatchNormalization",
    "ReLU",
    "Dense",
]


def test_model_a_layer_order_and_parameter_counts():
    # 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5: Flatten gives 5 * 5 * 64 = 1600 features.
    plain = conv(3, 1, 32) + conv(3, 32, 64) + dense(1600, 256) + dense(256, 10)
    assert conv(3, 1, 32) == 320
    bn_train = sum(bn(c)[0] for c in (32, 32, 64, 64, 256))
    bn_frozen = sum(bn(c)[1] for c in (32, 32, 64, 64, 256))
    model = bk.model_a(batch_norm=False)
    assert names(model) == A_PLAIN
    assert bk.parameter_counts(model) == {"total": plain, "trainable": plain, "non_trainable": 0}
    for placement, expected in (("after", A_AFTER), ("before", A_BEFORE)):
        model = bk.model_a(batch_norm=True, placement=placement)
        assert names(model) == expected, placement
        assert bk.parameter_counts(model) == {
            "total": plain + bn_train + bn_frozen,
            "trainable": plain + bn_train,
            "non_trainable": bn_frozen,
        }
        assert model.output_shape == (None, 10)
    relu_after = [
        layer.get_config()["activation"]
        for layer in bk.model_a(placement="after").layers
        if type(layer).__name__ in ("Conv2D", "Dense")
    ]
    relu_before = [
        layer.get_config()["activation"]
        for layer in bk.model_a(placement="before").layers
        if type(layer).__name__ in ("Conv2D", "Dense")
    ]
    assert relu_after == ["relu", "relu", "relu", "softmax"]
    assert relu_before == ["linear", "linear", "linear", "softmax"]


def test_model_b_layer_order_and_parameter_counts():
    # 28 -> conv 26 -> conv 24 -> pool 12: 12 * 12 * 64 = 9216 features.
    plain = conv(3, 1, 32) + conv(3, 32, 64) + dense(9216, 128) + dense(128, 10)
    model = bk.model_b()
    assert names(model) == [
        "Conv2D",
        "BatchNormalization",
        "Conv2D",
        "BatchNormalization",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "BatchNormalization",
        "Dense",
    ]
    trainable = plain + sum(bn(c)[0] for c in (32, 64, 128))
    assert bk.parameter_counts(model) == {
        "total": trainable + 2 * (32 + 64 + 128),
        "trainable": trainable,
        "non_trainable": 2 * (32 + 64 + 128),
    }
    assert names(bk.model_b(placement="before"))[:3] == ["Conv2D", "BatchNormalization", "ReLU"]
    assert bk.parameter_counts(bk.model_b(batch_norm=False))["total"] == plain


def test_model_c_dense_and_the_fixed_conv_snippet():
    model = bk.model_c_dense()
    assert names(model) == ["Dense", "BatchNormalization", "Dense", "BatchNormalization", "Dense"]
    assert model.output_shape == (None, 1, 2)
    trainable = dense(5, 16) + dense(16, 32) + dense(32, 2) + 2 * (16 + 32)
    assert bk.parameter_counts(model) == {
        "total": trainable + 2 * (16 + 32),
        "trainable": trainable,
        "non_trainable": 96,
    }
    fixed = bk.model_c_conv()
    assert names(fixed) == ["Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense"]
    assert fixed.output_shape == (None, 10)
    assert bk.parameter_counts(fixed)["trainable"] == conv(3, 1, 32) + 64 + dense(13 * 13 * 32, 10)


def test_model_c_conv_as_written_fails_as_described():
    with pytest.raises(SyntaxError):
        compile(bk.MODEL_C_CONV_AS_WRITTEN, "<source C>", "exec")
    _, keras = bk.require_keras()
    with_comma = bk.MODEL_C_CONV_AS_WRITTEN.replace("MaxPooling2D((2, 2))\n", "MaxPooling2D((2, 2)),\n")
    scope = {"keras": keras}
    exec(with_comma, scope)  # noqa: S102  (runs the source snippet, repaired, exactly as a reader would)
    assert scope["model"].output_shape == (None, 13, 13, 10)  # one prediction per pooled pixel, not per image


@pytest.mark.parametrize("builder", [bk.model_a, bk.model_b, bk.model_c_dense, bk.model_c_conv])
def test_builders_reject_bad_settings(builder):
    with pytest.raises(ValueError, match="placement"):
        builder(placement="middle")
    with pytest.raises(TypeError, match="batch_norm"):
        builder(batch_norm="yes")


def test_seeded_builders_are_reproducible():
    first = bk.model_c_conv(seed=5).get_weights()
    second = bk.model_c_conv(seed=5).get_weights()
    other = bk.model_c_conv(seed=6).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other[0])


# --- fit and History ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    mnist = bnlib.load_mnist().subset(64, 32)
    return mnist.keras("train"), mnist.keras("test")


CONTRACT_RUN = dict(epochs=2, batch_size=20, seed=0, validation_split=0.25, progress=False, meta={"run": "t"})


@pytest.fixture(scope="module")
def contract_history(tiny):
    train, _ = tiny
    return bk.fit(bk.model_c_conv, train, **CONTRACT_RUN)


def test_fit_fills_the_history_contract(tiny, contract_history):
    train, _ = tiny
    history = contract_history
    # 64 images, 25% held out (Keras's rule: the last 16) -> 48 trained in batches of 20, 20, 8.
    assert isinstance(history, bnlib.history.History)
    assert history.epochs == 2 and len(history.batch_loss) == 6
    for epoch in range(2):
        weighted = np.average(history.batch_loss[3 * epoch : 3 * epoch + 3], weights=[20, 20, 8])
        assert history.train_loss[epoch] == pytest.approx(weighted, rel=1e-5)
    assert all(0.0 <= a <= 1.0 for a in history.train_accuracy + history.val_accuracy)
    assert all(np.isfinite(history.val_loss)) and all(s > 0 for s in history.seconds)
    assert {"framework": "keras", "seed": 0, "batch_size": 20, "run": "t"}.items() <= history.meta.items()
    assert "CPU" in history.meta["device"] or "GPU" in history.meta["device"]
    assert history.meta["backend"] == "tensorflow" and history.meta["learning_rate"] == 1e-3
    assert history.meta["jit_compile"] is False  # Keras's "auto" on a CPU
    frame = history.to_frame()
    assert list(frame["epoch"]) == [1, 2] and {"train_loss", "val_accuracy", "model"} <= set(frame.columns)
    no_val = bk.fit(bk.model_c_conv, train, epochs=1, batch_size=32, seed=0, progress=False)
    assert np.isnan(no_val.val_loss[0]) and len(no_val.batch_loss) == 2


@pytest.mark.parametrize("n, fraction", [(1024, 0.2), (64, 0.25), (1000, 0.3), (7, 0.5), (60_000, 0.2)])
def test_validation_split_sizes_follow_keras(n, fraction):
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    x = np.arange(n)
    kept, held_out = train_validation_split((x,), validation_split=fraction)
    assert bk.validation_split_sizes(n, fraction) == (len(kept[0]), len(held_out[0]))


def test_validation_split_sizes_refuse_empty_parts():
    with pytest.raises(ValueError, match="no validation image"):
        bk.validation_split_sizes(10, 1e-20)  # 1 - 1e-20 rounds to 1.0
    with pytest.raises(ValueError, match="no training image"):
        bk.validation_split_sizes(1, 0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        bk.validation_split_sizes(10, 1.0)


def test_fit_is_deterministic_for_a_seed(tiny, contract_history):
    train, _ = tiny
    again = bk.fit(bk.model_c_conv, train, **CONTRACT_RUN)
    assert again.batch_loss == contract_history.batch_loss
    assert again.val_loss == contract_history.val_loss
    # (that another seed gives other weights is tested by test_seeded_builders_are_reproducible)


def test_eager_and_graph_training_agree(tiny, contract_history):
    train, _ = tiny
    assert contract_history.meta["run_eagerly"] is True  # 6 steps: below bk.EAGER_BELOW_STEPS
    graph = bk.fit(bk.model_c_conv, train, **{**CONTRACT_RUN, "run_eagerly": False})
    assert graph.meta["run_eagerly"] is False
    np.testing.assert_allclose(graph.batch_loss, contract_history.batch_loss, rtol=1e-4)
    np.testing.assert_allclose(graph.val_loss, contract_history.val_loss, rtol=1e-4)


def test_batch_losses_are_the_losses_of_each_batch(tiny):
    """With a zero learning rate the weights never move, so each step's loss can be recomputed directly."""
    _, keras = bk.require_keras()
    (x, y), _ = tiny
    model = bk.model_c_conv(seed=0)
    history = bk.fit(model, (x, y), epochs=1, batch_size=24, seed=0, learning_rate=0.0, shuffle=False, progress=False)
    direct = [
        float(np.mean(keras.losses.sparse_categorical_crossentropy(y[i : i + 24], model(x[i : i + 24], training=True))))
        for i in range(0, 64, 24)
    ]
    np.testing.assert_allclose(history.batch_loss, direct, rtol=1e-5)
    # The running mean Keras reports would differ from these on every batch but the first.
    assert not np.allclose(np.cumsum(direct) / np.arange(1, 4), direct)


def test_fit_rejects_bad_input(tiny):
    train, test = tiny
    x, y = train
    with pytest.raises(ValueError, match="not both"):
        bk.fit(bk.model_c_conv, train, val=test, validation_split=0.2, epochs=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="validation_split"):
        bk.fit(bk.model_c_conv, train, validation_split=1.5, epochs=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="epochs"):
        bk.fit(bk.model_c_conv, train, epochs=0, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="learning_rate"):
        bk.fit(bk.model_c_conv, train, epochs=1, batch_size=8, seed=0, learning_rate=-1.0)
    with pytest.raises(TypeError, match="one-hot"):
        bk.fit(bk.model_c_conv, (x, np.eye(10, dtype=np.float32)[y]), epochs=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="shapes"):
        bk.fit(bk.model_c_conv, (x, y[:10]), epochs=1, batch_size=8, seed=0)
    with pytest.raises(TypeError, match="keras.Model"):
        bk.fit("model_a", train, epochs=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="equal length"):
        bk.batch_losses_from_running_means([1.0, 2.0], [4])


def test_evaluate_matches_keras(tiny):
    bk.require_keras()
    _, (x, y) = tiny
    model = bk.model_c_conv(seed=1)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    got = bk.evaluate(model, (x, y))
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])


def test_evaluate_batch_size_changes_memory_not_the_result(tiny):
    bk.require_keras()
    _, (x, y) = tiny
    model = bk.model_c_conv(seed=2)
    whole = bk.evaluate(model, (x, y), batch_size=len(x))
    assert bk.evaluate(model, (x, y), batch_size=3) == pytest.approx(whole, rel=1e-5)
    assert bk.evaluate(model, (x, y)) == pytest.approx(whole, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        bk.evaluate(model, (x, y), batch_size=0)


def test_seed_everything_seeds_tensorflow_once_it_is_imported():
    tf, _ = bk.require_keras()
    bnlib.seed_everything(5)
    first = tf.random.uniform((4,)).numpy()
    bnlib.seed_everything(5)
    again = tf.random.uniform((4,)).numpy()
    bnlib.seed_everything(6)
    other = tf.random.uniform((4,)).numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


# --- never a silent NaN -------------------------------------------------------------------------


@pytest.mark.parametrize("run_eagerly", [True, False])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_huge_learning_rate_stops_fit_at_the_first_nan_loss(tiny, batch_norm, run_eagerly):
    train, _ = tiny
    with pytest.raises(bk.TrainingDivergedError) as caught:
        bk.fit(
            lambda: bk.model_c_conv(batch_norm=batch_norm),
            train,
            epochs=3,
            batch_size=16,
            seed=0,
            learning_rate=1e30,
            progress=False,
            run_eagerly=run_eagerly,
        )
    error = caught.value
    assert bk.TrainingDivergedError is bnlib.training.TrainingDivergedError  # one error for both frameworks
    assert isinstance(error, FloatingPointError) and isinstance(error, ValueError)
    # Step 1 is computed with the initial weights (finite); its update makes the weights ~1e30.
    assert (error.epoch, error.step, error.learning_rates) == (1, 2, [1e30]) and not np.isfinite(error.loss)
    assert len(error.epoch_batch_loss) == 2 and np.isfinite(error.epoch_batch_loss[0])
    message = str(error)
    for part in ("epoch 1 of 3", "step 2 of 4", "is nan", "learning rate 1e+30", ".history"):
        assert part in message, (part, message)
    assert error.history.epochs == 0 and error.history.batch_loss == []
    assert error.history.meta["learning_rate"] == 1e30 and error.history.meta["framework"] == "keras"


@pytest.mark.parametrize("run_eagerly", [True, False])
def test_nan_or_infinite_images_are_refused_before_training(tiny, run_eagerly):
    """Refused up front: in TensorFlow's compiled graph a fused Conv2D+ReLU turns NaN into 0 (no NaN loss to catch)."""
    (x, y), (x_test, y_test) = tiny
    x = x.copy()
    x[50, 3, 4, 0] = np.nan
    x[60, 0, 0, 0] = np.inf
    with pytest.raises(
        ValueError, match="train images hold NaN or infinite values in 2 image.s., the first at index 50"
    ):
        bk.fit(bk.model_c_conv, (x, y), epochs=2, batch_size=16, seed=0, progress=False, run_eagerly=run_eagerly)
    bad_val = x_test.copy()
    bad_val[3] = np.nan
    with pytest.raises(ValueError, match="val images hold NaN"):
        bk.fit(bk.model_c_conv, (x[:48], y[:48]), val=(bad_val, y_test), epochs=1, batch_size=16, seed=0)
    with pytest.raises(ValueError, match="data images hold NaN"):
        bk.evaluate(bk.model_c_conv(), (bad_val, y_test))


def nan_after(steps: int):
    """A model that, like a layer overflowing mid-training, outputs NaN from training step ``steps + 1`` on."""
    keras = bk.import_keras()

    class NanAfter(keras.layers.Layer):
        def build(self, input_shape):
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

        def call(self, inputs, training=False):
            if training:
                self.count.assign(self.count + 1.0)
            poison = keras.ops.where(self.count > steps, float("nan"), 1.0)
            return inputs * keras.ops.cast(poison, inputs.dtype)

    def build():
        model = bk.model_c_conv(batch_norm=False)
        return keras.Sequential([keras.Input((28, 28, 1)), *model.layers, NanAfter()], name="nan_after")

    return build


@pytest.mark.parametrize("run_eagerly", [True, False])
def test_the_history_of_the_finished_epochs_survives_a_divergence(tiny, run_eagerly):
    train, _ = tiny  # 64 images in batches of 16: 4 steps per epoch; NaN from step 6 = epoch 2, step 2
    with pytest.raises(bk.TrainingDivergedError, match="epoch 2 of 3, step 2 of 4") as caught:
        bk.fit(nan_after(5), train, epochs=3, batch_size=16, seed=0, progress=False, run_eagerly=run_eagerly)
    history = caught.value.history
    assert (caught.value.epoch, caught.value.step) == (2, 2) and np.isnan(caught.value.loss)
    assert "(step 6 of the run)" in str(caught.value)
    assert history.epochs == 1 and len(history.batch_loss) == 4 and np.isfinite(history.batch_loss).all()
    assert np.isfinite(history.train_loss).all() and history.meta["run_eagerly"] is run_eagerly
    assert "1 finished epoch(s)" in str(caught.value)


def test_fit_refuses_an_infinite_learning_rate_and_a_bad_jit_compile(tiny):
    train, _ = tiny
    with pytest.raises(ValueError, match="finite number >= 0, got inf"):
        bk.fit(bk.model_c_conv, train, epochs=1, batch_size=8, seed=0, learning_rate=float("inf"))
    with pytest.raises(ValueError, match="jit_compile must be True, False or 'auto'"):
        bk.fit(bk.model_c_conv, train, epochs=1, batch_size=8, seed=0, jit_compile="yes")
    with pytest.raises(ValueError, match="choose one"):
        bk.fit(bk.model_c_conv, train, epochs=1, batch_size=8, seed=0, jit_compile=True, run_eagerly=True)


def test_moving_mean_trajectory_follows_keras_update_rule():
    keras = bk.import_keras()
    stream = np.random.default_rng(0).normal(5.0, 2.0, size=(20, 8, 3)).astype(np.float32)
    got = bk.moving_mean_trajectory(keras.layers.BatchNormalization(momentum=0.9), stream, feature=1)
    expected, moving = [], 0.0
    for batch in stream:
        moving = 0.9 * moving + 0.1 * batch[:, 1].mean()
        expected.append(moving)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="feature must be an integer in \\[0, 3\\)"):
        bk.moving_mean_trajectory(keras.layers.BatchNormalization(), stream, feature=3)
    with pytest.raises(ValueError, match="non-empty array"):
        bk.moving_mean_trajectory(keras.layers.BatchNormalization(), stream[0])
    with pytest.raises(TypeError, match="BatchNormalization"):
        bk.moving_mean_trajectory(keras.layers.Dense(3), stream)


def ctrl_c_at(step: int):
    """A model whose layer presses Ctrl-C (sends SIGINT to this process) during training step ``step``."""
    import os
    import signal

    keras = bk.import_keras()

    class CtrlC(keras.layers.Layer):
        calls = 0

        def call(self, inputs, training=False):
            if training:
                type(self).calls += 1
                if type(self).calls == step:
                    os.kill(os.getpid(), signal.SIGINT)
            return inputs

    def build():
        model = bk.model_c_conv(batch_norm=False)
        return keras.Sequential([keras.Input((28, 28, 1)), CtrlC(), *model.layers], name="ctrl_c")

    return build


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test: a process started in the background (nohup, `cmd &`) ignores SIGINT."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_fit_after_the_step_and_keeps_the_history(tiny, default_sigint):
    import signal

    train, _ = tiny  # 4 steps per epoch; Ctrl-C during step 6 = epoch 2, step 2, which still completes
    with pytest.raises(bk.TrainingInterrupted, match="in epoch 2 after 2 step") as caught:
        bk.fit(ctrl_c_at(6), train, epochs=3, batch_size=16, seed=0, progress=False, run_eagerly=True)
    assert bk.TrainingInterrupted is bnlib.training.TrainingInterrupted
    assert isinstance(caught.value, KeyboardInterrupt)
    error = caught.value
    assert (error.epoch, error.steps, len(error.epoch_batch_loss)) == (2, 2, 2)
    assert error.history.epochs == 1 and len(error.history.batch_loss) == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
