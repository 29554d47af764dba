"""Train and export the zoo's ResNet-20 (tests/zoo/resnet20.onnx) and its test inputs (resnet20_expected.npz).

The network is the CIFAR ResNet-20 of He et al. (CVPR 2016, section 4.2):
a 3x3 convolution to 16 channels, then 3 stages of 3 basic blocks (two
3x3 convolutions, each followed by batch norm, a ReLU after the first and
after the residual add) with 16, 32 and 64 channels, the first block of
stages 2 and 3 at stride 2; global average pooling and a dense layer to
10 classes. Shortcuts are the identity, except where the shape changes
(2 blocks): a 1x1 convolution at stride 2 with batch norm (option B).
0.27 M parameters, 41 M multiply-adds per 32x32x3 image.

There is no CIFAR-10 on this machine (no network), so the inputs are
MNIST digits (/work/shared/data/mnist; --data fashion-mnist for
Fashion-MNIST): each 28x28 image padded with 2 zero pixels on each side to
32x32 and repeated to 3 channels, pixels scaled to [0, 1]. Trained with
torch on the CPU for a fixed time budget (SGD with Nesterov momentum, a
one-cycle schedule fitted to the budget, batches of 64, random 32x32 crops
of a 2-pixel padding; horizontal flips for Fashion-MNIST only). The
accuracy reached on the full 10,000-image test set is printed and kept in
the npz ("test_accuracy"). Exported with torch.onnx.export (the
TorchScript exporter, opset 13, eval mode: it folds each batch norm into
the convolution before it; ONNX BatchNormalization nodes after a
convolution would be folded by pysmpc's importer the same way).

Committed run (python tests/zoo/make_resnet20.py --seconds 300, on 2
cores shared with other work): 231 steps of 64 (14,784 images, a quarter
of an epoch) in 371 s; MNIST test accuracy 97.80% (10,000 images).

The npz holds the first `--keep` test images (uint8, N x 32 x 32: the
model reads them repeated to 3 channels, NCHW, / 255), their labels and
torch's float32 logits for them (the eval-mode module, not the ONNX file).

Run: python tests/zoo/make_resnet20.py [--seconds 300] [--keep 1000] [--data mnist]
(the budget of training, plus about two minutes of evaluation, one thread).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "..", "shared", "data")


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def to_32x32(images: np.ndarray) -> np.ndarray:
    """N x 28 x 28 uint8 -> N x 32 x 32 uint8 (2 zero pixels on each side)."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def as_input(images32: np.ndarray) -> np.ndarray:
    """N x 32 x 32 uint8 -> N x 3 x 32 x 32 float32 in [0, 1] (what the model reads, NCHW)."""
    x = images32.astype(np.float32) / 255.0
    return np.repeat(x[:, None], 3, axis=1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = functional.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return functional.relu(y + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(3):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = functional.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def augment(x: torch.Tensor, rng: np.random.Generator, flips: bool) -> torch.Tensor:
    """Random 32x32 crops of the 2-pixel zero-padded batch, and horizontal flips (He et al.'s augmentation, milder)."""
    n = x.shape[0]
    padded = functional.pad(x, (2, 2, 2, 2))
    dy, dx = rng.integers(0, 5, 2)
    out = padded[:, :, dy: dy + 32, dx: dx + 32]
    if not flips:  # digits are not mirror-symmetric
        return out
    flip = torch.from_numpy(rng.random(n) < 0.5)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> tuple[float, np.ndarray]:
    net.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits.append(net(torch.from_numpy(as_input(x[i: i + batch]))).numpy())
    logits = np.concatenate(logits)
    return float((logits.argmax(1) == y).mean()), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training time budget")
    parser.add_argument("--keep", type=int, default=1000, help="test images kept in the npz")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--data", choices=("mnist", "fashion-mnist"), default="mnist")
    args = parser.parse_args()
    torch.manual_seed(0)
    # One thread: on 2 cores shared with other work, two torch threads made a step 6x slower (spin-waiting).
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = os.path.join(DATA, args.data)
    train_x = to_32x32(read_idx(os.path.join(data, "train-images-idx3-ubyte.gz")))
    train_y = read_idx(os.path.join(data, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    test_x = to_32x32(read_idx(os.path.join(data, "t10k-images-idx3-ubyte.gz")))
    test_y = read_idx(os.path.join(data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)

    net = ResNet20()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    # Measure the step time first, then fit a one-cycle schedule into the budget.
    start = time.time()
    steps_done, total_steps = 0, None
    net.train()
    while True:
        order = rng.permutation(len(train_x))
        for i in range(0, len(order) - args.batch + 1, args.batch):
            if total_steps is None and steps_done == 20:
                total_steps = max(int(args.seconds / ((time.time() - start) / 20)), 40)
                scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=total_steps - 20)
            if total_steps is not None and steps_done >= total_steps:
                break
            idx = order[i: i + args.batch]
            x = augment(torch.from_numpy(as_input(train_x[idx])), rng, flips=args.data == "fashion-mnist")
            loss = functional.cross_entropy(net(x), torch.from_numpy(train_y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if total_steps is not None:
                scheduler.step()
            steps_done += 1
            if steps_done % 50 == 0:
                print(f"step {steps_done}/{total_steps}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
        else:
            continue
        break
    trained_s = time.time() - start
    test_acc, _ = accuracy(net, test_x, test_y)
    print(f"trained {steps_done} steps of {args.batch} ({steps_done * args.batch} images) in {trained_s:.0f} s; "
          f"{args.data} test accuracy {test_acc:.4f}")

    net.eval()
    keep_x, keep_y = test_x[: args.keep], test_y[: args.keep]
    _, logits = accuracy(net, keep_x, keep_y)
    example = torch.from_numpy(as_input(keep_x[:1]))
    path = os.path.join(HERE, "resnet20.onnx")
    torch.onnx.export(net, (example,), path, dynamo=False, opset_version=13, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    np.savez_compressed(os.path.join(HERE, "resnet20_expected.npz"), images=keep_x, labels=keep_y,
                        logits=logits.astype(np.float32), test_accuracy=np.float64(test_acc),
                        train_images=np.int64(steps_done * args.batch), data=args.data)
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and resnet20_expected.npz")


if __name__ == "__main__":
    main()
