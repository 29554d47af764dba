"""Train the MNIST CNN with Keras and save it in a format pysmpc reads.

    pip install torch==2.13.0 && pip install keras
    KERAS_BACKEND=torch python examples/create_model.py [--data DIR] [--out model.hdf5]

The model (about 24k weights; avg pool before relu, no softmax):

    Input (28, 28, 1) -> Conv2D(16, 3x3) -> AvgPool 2 -> relu
      -> Conv2D(32, 3x3) -> AvgPool 2 -> relu
      -> Conv2D(64, 3x3) -> AvgPool 2 -> relu -> Flatten -> Dense(10)

Inputs are pixels / 255 as float, NHWC. Training reads the official MNIST
IDX files (``train-images-idx3-ubyte.gz`` etc., raw or gzipped) from
``--data`` (default: ../shared/data/mnist next to the repository).

The model is saved with ``model.save("model.hdf5")``: for a path ending in
.h5/.hdf5 Keras 3 writes its legacy HDF5 layout (architecture JSON in the
``model_config`` attribute, weights under ``model_weights/``), which
``pysmpc.models.load_graph`` reads without Keras. The script then reloads
the file with pysmpc and reports the float and fixed-point test accuracy.
It records the input range, [0, 1], in the file's root attribute
``pysmpc_input_range``, which pysmpc reads (``Model.input_range``).
``--ship`` also writes pysmpc/data/mnist_cnn.h5 and mnist_samples.npz.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def load_mnist(data_dir: Path):
    """Return (x_train, y_train, x_test, y_test): float32 NHWC in [0, 1] and int labels."""
    from pysmpc.models import read_idx

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
            if (data_dir / name).exists():
                return data_dir / name
        raise FileNotFoundError(f"{stem}(.gz) not found in {data_dir}; pass --data")

    def images(stem):
        return (read_idx(find(stem)).astype(np.float32) / 255.0)[..., None]

    return (images("train-images-idx3-ubyte"), read_idx(find("train-labels-idx1-ubyte")).astype(np.int64),
            images("t10k-images-idx3-ubyte"), read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64))


def build_model():
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 3, name="conv1"),
            layers.AveragePooling2D(2, name="pool1"),
            layers.Activation("relu", name="relu1"),
            layers.Conv2D(32, 3, name="conv2"),
            layers.AveragePooling2D(2, name="pool2"),
            layers.Activation("relu", name="relu2"),
            layers.Conv2D(64, 3, name="conv3"),
            layers.AveragePooling2D(2, name="pool3"),
            layers.Activation("relu", name="relu3"),
            layers.Flatten(name="flatten"),
            layers.Dense(10, name="logits"),
        ],
        name="mnist_cnn",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_pos", nargs="?", help="MNIST IDX directory (same as --data)")
    parser.add_argument("--data", default=None, help="MNIST IDX directory")
    parser.add_argument("--out", default="model.hdf5", help="output model file (.hdf5/.h5)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2, help="peak Adam learning rate (cosine decay to 0)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ship", action="store_true", help="also write pysmpc/data/ files")
    args = parser.parse_args(argv)
    data_dir = Path(args.data or args.data_pos or REPO.parent / "shared" / "data" / "mnist")

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    from pysmpc.graph import run_fixed_point, run_float
    from pysmpc.models import load_graph

    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    keras.utils.set_random_seed(args.seed)
    model = build_model()
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.time()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    print(f"trained in {time.time() - start:.0f} s")
    _, keras_acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"Keras test accuracy: {keras_acc:.4f} (10,000 images)")

    model.save(args.out, include_optimizer=False)  # weights only: no Adam state in the file
    # Record the input range the model was trained on (pixels / 255), so that
    # pysmpc clients scale uint8 images for it, or refuse values outside it.
    import h5py

    with h5py.File(args.out, "r+") as f:
        f.attrs["pysmpc_input_range"] = np.array([0.0, 1.0])
    graph = load_graph(args.out)
    print(graph.summary())
    float_pred = run_float(graph, x_test).argmax(axis=1)
    fixed_pred = run_fixed_point(graph, x_test, frac_bits=16).argmax(axis=1)
    print(f"pysmpc float accuracy:       {np.mean(float_pred == y_test):.4f}")
    print(f"pysmpc fixed-point (F=16):   {np.mean(fixed_pred == y_test):.4f}; "
          f"argmax agrees with float on {np.mean(fixed_pred == float_pred):.4f}")

    if args.ship:
        data = REPO / "pysmpc" / "data"
        shutil.copyfile(args.out, data / "mnist_cnn.h5")
        raw = np.rint(x_test[:16, ..., 0] * 255.0).astype(np.uint8)
        np.savez_compressed(data / "mnist_samples.npz", images=raw, labels=y_test[:16].astype(np.uint8))
        print(f"wrote {data / 'mnist_cnn.h5'} and {data / 'mnist_samples.npz'}")


if __name__ == "__main__":
    main()
