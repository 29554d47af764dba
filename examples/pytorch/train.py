"""Train a small MNIST CNN in PyTorch and save its weights for serve.py.

    pip install torch 'pysmpc[torch]'
    python examples/pytorch/train.py [--data DIR] [--epochs 1] [--out mnist_torch.pt]

The network (about 5k weights) uses only layers pysmpc computes on shares:
convolutions, average pooling, ReLU, flatten and a linear layer. Inputs are
PyTorch's usual NCHW batches of pixels / 255, (N, 1, 28, 28). Training reads
the MNIST IDX files from --data (default: $PYSMPC_MNIST_DIR, ./mnist or
../shared/data/mnist) and prints the test accuracy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from pysmpc.fl import load_mnist


class MnistNet(nn.Sequential):
    """Conv 8 -> avg pool -> relu -> conv 16 -> avg pool -> relu -> linear 10 (logits, no softmax)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 8, 3), nn.AvgPool2d(2), nn.ReLU(),
            nn.Conv2d(8, 16, 3), nn.AvgPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 10),
        )


def nchw(images: np.ndarray) -> torch.Tensor:
    """pysmpc.fl.load_mnist's (N, 28, 28, 1) arrays as PyTorch's (N, 1, 28, 28) float32 tensors."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="directory with the MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=60000, help="train on the first N training images")
    parser.add_argument("--out", default="mnist_torch.pt", help="where to save the weights (state_dict)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, y_train = load_mnist(args.data)
    x_test, y_test = load_mnist(args.data, "test")
    x_train, y_train = nchw(x_train[: args.train_images]), torch.from_numpy(y_train[: args.train_images])
    net = MnistNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train))
        for batch in order.split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(nchw(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"trained on {len(x_train)} images x {args.epochs} epochs in {time.time() - start:.0f} s; "
          f"test accuracy {accuracy:.4f}")
    torch.save(net.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
