"""Time one epoch of LeNet-5 on MNIST: bnlib.training.fit against a faithful copy of the source tutorial's loop.

The source loop: a Dataset that turns each stored image into a PIL image and
applies Resize(32) and ToTensor per item (as torchvision.datasets.MNIST with
that transform does), a DataLoader with batch 64 and no shuffling, ``loss.item()``
every step, then an extra pass over the training set for the training accuracy
and a pass over the test set. ``fit`` keeps the resized data on the device,
slices batches, reads losses once per epoch, takes the training accuracy from
the training pass, and evaluates the test set in batches of 1024.

Everything is measured once, in one run, on the same machine (see the printed
environment); on a shared machine the ratios are more trustworthy than the
seconds. Usage::

    python benchmarks/bench_lenet5.py                    # all 60,000 training images
    python benchmarks/bench_lenet5.py --train-size 6000  # a quick look
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

import bnlib
from bnlib.models import LeNet5, init_like_source
from bnlib.training import fit


class SourceStyleMNIST(torch.utils.data.Dataset):
    """Per-item PIL conversion + Resize + ToTensor, as torchvision.datasets.MNIST(transform=...) does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from PIL import Image
        from torchvision import transforms

        self.images, self.labels, self.Image = images, labels, Image
        self.transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.Image.fromarray(self.images[index], mode="L")), int(self.labels[index])


def source_epoch(model: nn.Module, train_loader, test_loader, device: torch.device) -> float:
    """One epoch the way the source tutorial runs it; returns seconds."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    running_loss = 0.0
    for images, labels in train_loader:
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss = loss_fn(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # a host-device synchronization per step
    for loader in (train_loader, test_loader):  # the extra accuracy pass, then the test set
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                correct += (model(images).argmax(1) == labels).sum().item()
                total += len(labels)
    return time.perf_counter() - start


def fit_epoch(model: nn.Module, train, test, device: torch.device) -> float:
    history = fit(model, train, val=test, epochs=1, batch_size=64, shuffle=False, device=device, progress=False)
    return history.seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=60_000, help="training images (default: all 60,000)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images (default: all 10,000)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: bnlib.get_device())")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = bnlib.get_device(args.device)
    mnist = bnlib.load_mnist().subset(args.train_size, args.test_size)
    print(bnlib.describe_environment())
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(
        f"{load}; torch threads: {torch.get_num_threads()}; {args.train_size:,} training and {args.test_size:,} test images; batch 64; one epoch each\n"
    )

    start = time.perf_counter()
    train = mnist.torch("train", size=32, device=device)
    test = mnist.torch("test", size=32, device=device)
    prep = time.perf_counter() - start
    print(f"fit's one-time data preparation (resize all images on the host, copy to {device}): {prep:.2f} s")

    loader = lambda x, y: torch.utils.data.DataLoader(SourceStyleMNIST(x, y), batch_size=64, shuffle=False)  # noqa: E731
    train_loader, test_loader = loader(mnist.x_train, mnist.y_train), loader(mnist.x_test, mnist.y_test)

    def model(norm):
        torch.manual_seed(0)
        return init_like_source(LeNet5(norm, softmax_output=True)).to(device)

    rows = []
    for name, norm in (("without BN", None), ("with nn.BatchNorm2d", nn.BatchNorm2d)):
        source = source_epoch(model(norm), train_loader, test_loader, device)
        ours = fit_epoch(model(norm), train, test, device)
        rows.append((name, source, ours))
        print(
            f"LeNet-5 {name:<22s} source loop {source:7.2f} s   fit {ours:7.2f} s   ratio {source / ours:5.1f}x   (with fit's data preparation: {source / (ours + prep):4.1f}x)"
        )

    ours_bn = fit_epoch(model("batch"), train, test, device)
    torch_bn = rows[1][2]
    print(
        f"\nfit with LeNet5('batch') (bnlib's BatchNorm) {ours_bn:7.2f} s vs nn.BatchNorm2d {torch_bn:7.2f} s: ratio nn/ours {torch_bn / ours_bn:4.2f}x"
    )
    if hasattr(os, "getloadavg"):
        print(
            f"load average at the end: {os.getloadavg()[0]:.1f} (timings on a busy machine are noisy; compare ratios)"
        )
    plain = rows[0][2]
    print(f"cost of nn.BatchNorm2d inside fit: {rows[1][2] / plain:4.2f}x the epoch without BN")


if __name__ == "__main__":
    main()
