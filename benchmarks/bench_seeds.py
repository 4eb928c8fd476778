"""Per-model cost of k seeds: the source tutorial's loop, k separate fit() runs, and the stacked trainer.

For LeNet-5 (Adam, batch 64, with and without bnlib's batch norm) and the
784-512-256-10 MLP (SGD with momentum, with and without batch norm), each arm
trains k models of one configuration for one epoch and reports seconds per
model:

* ``source loop``: the source tutorial's DataLoader loop (one model; per-item
  PIL resize, ``loss.item()`` every step: see ``bench_lenet5.py``), LeNet-5 only;
* ``fit x k``: k separate :func:`bnlib.training.fit` runs (the loop ``repeat_fit``
  used to run), divided by k;
* ``fit x k, channels_last``: the same with the model and its inputs channels-last;
* ``stacked, unfused``: :func:`bnlib.stacked.fit_stacked` with the optimizer's
  per-parameter loop (``foreach=False``), to separate the two levers;
* ``stacked``: :func:`bnlib.experiments.repeat_fit`'s default path (stacked
  network and one fused optimizer kernel), divided by k.

Arms are interleaved and repeated (``--repeats``), in a new random order each
round, and each arm's median is reported with its ratio to ``fit x k`` measured
in the same run: on a shared machine, compare ratios, not seconds. Usage::

    python benchmarks/bench_seeds.py                     # 6,000 images, k = 5, 3 rounds
    python benchmarks/bench_seeds.py --train-size 60000  # the full training set
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

import bnlib
from bnlib.models import MLP, LeNet5, init_like_source
from bnlib.stacked import fit_stacked
from bnlib.training import fit


def _models(make, seeds):
    models = []
    for seed in seeds:
        bnlib.seed_everything(seed)
        models.append(make())
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=6_000)
    parser.add_argument("--seeds", type=int, default=5, help="k, the models trained per configuration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip-source", action="store_true", help="leave out the slow source-loop arm")
    args = parser.parse_args()

    device = bnlib.get_device(args.device)
    seeds = list(range(args.seeds))
    mnist = bnlib.load_mnist().subset(args.train_size, 1_000)
    images = mnist.torch("train", size=32, device=device)
    flat = (mnist.torch("train", device=device)[0].flatten(1), images[1])
    print(bnlib.describe_environment())
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; " if hasattr(os, "getloadavg") else ""
    print(
        f"{load}torch threads {torch.get_num_threads()}; {args.train_size:,} images; k = {args.seeds} seeds; "
        f"one epoch per model; {args.repeats} interleaved rounds\n"
    )

    def lenet(norm):
        return lambda: init_like_source(LeNet5(norm)).to(device)

    def mlp(norm):
        return lambda: MLP(norm=norm).to(device)

    def adam(model, **kw):
        return torch.optim.Adam(model.parameters(), lr=1e-3, **kw)

    def sgd(model, **kw):
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **kw)

    configs = {
        "LeNet-5, no BN": (lenet(None), images, adam),
        "LeNet-5, BN": (lenet("batch"), images, adam),
        "MLP, no BN": (mlp(None), flat, sgd),
        "MLP, BN": (mlp("batch"), flat, sgd),
    }
    kwargs = {"epochs": 1, "batch_size": 64, "progress": False, "device": device}

    def fit_k(make, data, opt, channels_last=False):
        def run():
            models = _models(make, seeds)
            start = time.perf_counter()
            for model, seed in zip(models, seeds):
                x = data[0]
                if channels_last:
                    model.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                fit(model, (x, data[1]), seed=seed, optimizer=opt(model), **kwargs)
            return (time.perf_counter() - start) / len(seeds)

        return run

    def stacked(make, data, opt, fused=True):
        def run():
            models = _models(make, seeds)
            optimizers = [opt(m) if fused else opt(m, foreach=False) for m in models]
            start = time.perf_counter()
            fit_stacked(models, data, seeds=seeds, optimizers=optimizers, **kwargs)
            return (time.perf_counter() - start) / len(seeds)

        return run

    def source(make, _data, _opt):
        from bench_lenet5 import SourceStyleMNIST, source_epoch

        loader = torch.utils.data.DataLoader(
            SourceStyleMNIST(mnist.x_train, mnist.y_train), batch_size=64, shuffle=False
        )
        empty = torch.utils.data.DataLoader(SourceStyleMNIST(mnist.x_test[:0], mnist.y_test[:0]), batch_size=64)

        def run():
            return source_epoch(make(), loader, empty, device)  # one model: per model already

        return run

    arms = {}
    for name, (make, data, opt) in configs.items():
        if name.startswith("LeNet") and not args.skip_source:
            arms[(name, "source loop")] = source(make, data, opt)
        arms[(name, f"fit x {args.seeds}")] = fit_k(make, data, opt)
        if name.startswith("LeNet"):
            arms[(name, f"fit x {args.seeds}, channels_last")] = fit_k(make, data, opt, channels_last=True)
        arms[(name, "stacked, unfused")] = stacked(make, data, opt, fused=False)
        arms[(name, "stacked")] = stacked(make, data, opt)

    times = {key: [] for key in arms}
    rng = random.Random(0)  # noqa: S311  (an arm order, not a secret)
    for round_ in range(args.repeats + 1):
        order = list(arms)
        rng.shuffle(order)
        for key in order:
            seconds = arms[key]()
            if round_ > 0:  # round 0 warms up
                times[key].append(seconds)

    print(f"{'configuration':<16} {'arm':<28} {'s/model (median)':>17} {'min':>7} {'max':>7} {'vs fit x k':>11}")
    for name in configs:
        base = statistics.median(times[(name, f"fit x {args.seeds}")])
        for (config, arm), values in times.items():
            if config != name:
                continue
            median = statistics.median(values)
            print(f"{config:<16} {arm:<28} {median:17.2f} {min(values):7.2f} {max(values):7.2f} {base / median:10.2f}x")
    if hasattr(os, "getloadavg"):
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lenet5's source loop
    main()
