"""Time one training epoch of source A's Keras CNN (with and without BN) under each Keras option, in one run.

The options (issue 17, item 5):

==============  =====================================================================
``tf``          TensorFlow backend, Keras's defaults (the chapter's setting)
``tf-xla``      TensorFlow, ``compile(jit_compile=True)`` (XLA)
``tf-threads1`` TensorFlow, ``tf.config.threading`` intra-op = inter-op = 1
``tf-threads2`` TensorFlow, intra-op = inter-op = 2
``torch``       the torch backend (``KERAS_BACKEND=torch``)
==============  =====================================================================

Thread settings and the backend are fixed when a process starts, so each
lives in its own worker process (``tf`` and ``tf-xla`` share one), started
once: it imports Keras, builds :func:`bnlib.keras.model_a` (seed 0), compiles
it as :func:`bnlib.keras.fit` does (Adam 1e-3, sparse categorical
cross-entropy, accuracy, a per-step loss read as fit's divergence check does)
and runs a warm-up epoch on 2 batches, so graph tracing and XLA compilation
are not timed. Then the timed epochs, interleaved: each repeat runs every
option once, one worker computing at a time while the others wait idle, in
alternating order (forward, then backward), so a drift of the machine's speed
hits every option alike. An epoch is one pass over ``--train-size`` images in
batches of 250 (source A's batch), shuffled, without the validation pass.

Printed: per option and model, the median seconds per epoch over the repeats
(with min-max), that median scaled to source A's 48,000 training images, and
the ratio to ``tf`` (median of the per-repeat ratios: > 1 means faster than
the default). On a shared machine the ratios are more trustworthy than the
seconds. Usage::

    python benchmarks/bench_keras.py                       # 6,000 images, 3 repeats: 1.5 min on 2 quiet cores (4,000: 69 s)
    python benchmarks/bench_keras.py --train-size 12000 --repeats 5
    BNLIB_BENCH_KERAS_IMAGES=48000 python benchmarks/bench_keras.py
    python benchmarks/bench_keras.py --options tf torch    # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

OPTIONS = ("tf", "tf-xla", "tf-threads1", "tf-threads2", "torch")
#: The worker process each option runs in, and that worker's settings.
WORKERS = {
    "tf": "tf-default",
    "tf-xla": "tf-default",
    "tf-threads1": "tf-threads1",
    "tf-threads2": "tf-threads2",
    "torch": "torch",
}
BATCH_SIZE = 250  # source A's
SOURCE_A_IMAGES = 48_000  # 60,000 with validation_split=0.2


# --- the worker: one process per backend / thread setting -------------------------------------


def worker(name: str, train_size: int) -> None:
    """Serve ``prepare OPTION BN`` and ``time OPTION BN`` lines from stdin, one JSON line each on stdout."""
    os.environ["KERAS_BACKEND"] = "torch" if name == "torch" else "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    import bnlib
    import bnlib.keras as bk
    from bnlib.keras._backend import _load_triton_before_tensorflow

    _load_triton_before_tensorflow()
    if name.startswith("tf-threads"):  # before TensorFlow runs its first operation
        import tensorflow as tf

        threads = int(name[len("tf-threads") :])
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras = bk.import_keras()
    if name != "torch":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    x, y = bnlib.load_mnist().subset(train_size, 8).keras("train")
    models: dict[tuple[str, bool], object] = {}

    class LossCheck(keras.callbacks.Callback):
        """What bnlib.keras.fit does every step: read the loss and check that it is finite."""

        def on_train_batch_end(self, batch, logs=None):
            if not np.isfinite(float(logs["loss"])):
                raise FloatingPointError("the benchmark's training diverged")

    def prepare(option: str, batch_norm: bool) -> dict:
        start = time.perf_counter()
        model = bk.model_a(batch_norm=batch_norm, seed=0)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=option == "tf-xla",
        )
        model.fit(x[: 2 * BATCH_SIZE], y[: 2 * BATCH_SIZE], batch_size=BATCH_SIZE, epochs=1, verbose=0)
        models[option, batch_norm] = model
        return {"seconds": time.perf_counter() - start, "jit_compile": bool(model.jit_compile)}

    def timed(option: str, batch_norm: bool) -> dict:
        model = models[option, batch_norm]
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0, callbacks=[LossCheck()])
        return {"seconds": time.perf_counter() - start}

    print(json.dumps({"ready": name, "backend": bk.backend_name(), "device": bk.keras_device()}), flush=True)
    for line in sys.stdin:
        command, option, batch_norm = line.split()
        do = prepare if command == "prepare" else timed
        print(json.dumps(do(option, batch_norm == "1")), flush=True)


# --- the parent: start the workers, interleave, print -------------------------------------------


class Worker:
    def __init__(self, name: str, train_size: int) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
        env.pop("KERAS_BACKEND", None)
        self.name = name
        self.process = subprocess.Popen(  # noqa: S603  (this script, run again as a worker)
            [sys.executable, __file__, "--worker", name, "--train-size", str(train_size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (run it alone with --worker {self.name} to see why)")
        return json.loads(line)

    def ask(self, command: str, option: str, batch_norm: bool) -> dict:
        self.process.stdin.write(f"{command} {option} {int(batch_norm)}\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        """End the worker: EOF on its stdin, and a kill if it has not exited 30 s later."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train-size",
        type=int,
        default=int(os.environ.get("BNLIB_BENCH_KERAS_IMAGES", "6000")),
        help="images per epoch",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per option and model (at least 3)")
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.train_size)
        return
    if args.repeats < 1 or args.train_size < BATCH_SIZE:
        parser.error(f"--repeats must be >= 1 and --train-size >= {BATCH_SIZE}")
    options = ["tf", *[o for o in args.options if o != "tf"]]  # the reference always runs
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(
        f"bench_keras: source A's CNN, {args.train_size:,} images per epoch, batch {BATCH_SIZE}, "
        f"{args.repeats} interleaved repeats; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {load:.2f} at start",
        flush=True,
    )
    workers: dict[str, Worker] = {}
    for option in options:  # started together: their imports overlap, nothing is timed yet
        name = WORKERS[option]
        if name not in workers:
            workers[name] = Worker(name, args.train_size)
    try:
        for worker_ in workers.values():
            ready = worker_.read()
            print(f"  worker {ready['ready']}: backend {ready['backend']}, device {ready['device']}", flush=True)
        prepared = {}
        for option in options:
            for batch_norm in (False, True):
                prepared[option, batch_norm] = workers[WORKERS[option]].ask("prepare", option, batch_norm)
                if option == "tf-xla" and not prepared[option, batch_norm]["jit_compile"]:
                    raise RuntimeError("Keras refused jit_compile=True for model A")
        print(
            "  warm-up (build, compile, 2 batches): "
            + ", ".join(f"{o}{' BN' if bn else ''} {p['seconds']:.1f} s" for (o, bn), p in prepared.items()),
            flush=True,
        )
        seconds: dict[tuple[str, bool], list[float]] = {key: [] for key in prepared}
        for repeat in range(args.repeats):
            order = [(o, bn) for o in options for bn in (False, True)]
            if repeat % 2:
                order.reverse()
            for option, batch_norm in order:
                seconds[option, batch_norm].append(workers[WORKERS[option]].ask("time", option, batch_norm)["seconds"])
            print(f"  repeat {repeat + 1} of {args.repeats} done", flush=True)
    finally:
        for worker_ in workers.values():
            worker_.close()

    print()
    print(
        f"{'option':<12} {'model A':<8} {'median s/epoch':>14} {'min-max':>13} "
        f"{'48k-image epoch':>16} {'speed vs tf':>12}"
    )
    for batch_norm in (False, True):
        for option in options:
            values = seconds[option, batch_norm]
            median = statistics.median(values)
            ratio = statistics.median(
                reference / value for reference, value in zip(seconds["tf", batch_norm], values, strict=True)
            )
            print(
                f"{option:<12} {'BN' if batch_norm else 'no BN':<8} {median:>14.2f} "
                f"{f'{min(values):.2f}-{max(values):.2f}':>13} "
                f"{median * SOURCE_A_IMAGES / args.train_size:>14.1f} s {ratio:>11.2f}x"
            )
    print(
        f"\nspeed vs tf: the median over repeats of (tf's epoch time / this option's) in the same repeat; "
        f"> 1 is faster. Total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end."
    )


if __name__ == "__main__":
    main()
