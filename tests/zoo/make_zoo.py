"""Train the model zoo with the real frameworks and write it next to this script. Run by hand.

Needs Keras 3, PyTorch, onnx/onnxscript and scikit-learn (the tests need none of them):

    pip install torch==2.13.0 keras h5py onnx onnxscript scikit-learn
    KERAS_BACKEND=torch python tests/zoo/make_zoo.py [--mnist DIR] [--retrain] [MODEL ...]

MNIST comes from the IDX files in DIR (default ../shared/data/mnist from
the repository root); the tabular set is scikit-learn's digits. Seeds are
fixed. MODEL names some of mnist_convnet, lenet5, mobilenet_mini and
digits_mlp (default: all). A Keras model whose file is already here is
loaded, not trained again, unless --retrain (its test outputs are
recomputed either way); LeNet-5 is always trained. On two busy cores the
convnet took 13 minutes, MobileNet 11 to 33, LeNet-5 16 and the MLP 6. Writes:

* mnist_convnet.keras, mnist_convnet.h5  the keras.io "Simple MNIST convnet"
  (Conv2D 32 3x3 relu, MaxPooling2D 2, Conv2D 64 3x3 relu, MaxPooling2D 2,
  Flatten, Dropout 0.5, Dense 10 softmax), Keras 3 archive and legacy HDF5.
* lenet5.onnx                            LeNet-5 in PyTorch (conv 6 5x5 pad 2,
  max pool, conv 16 5x5, max pool, fc 120, fc 84, fc 10; relu), exported by
  torch.onnx.export (dynamo exporter, opset 18), NCHW input.
* mobilenet_mini.keras                   a MobileNet-style Keras net: Conv2D 8
  3x3 stride 2 + BatchNormalization + ReLU6, three depthwise-separable blocks
  (DepthwiseConv2D 3x3 'same', stride 2 in the second, + BatchNormalization +
  ReLU(max_value=6) + Conv2D 1x1 with 16, 32, 32 filters +
  BatchNormalization + Activation relu6), GlobalAveragePooling2D, Dropout,
  Dense 10 softmax.
* digits_mlp.keras                       an MLP on scikit-learn's digits as a
  binary task (digit >= 5): Dense, BatchNormalization, relu, Dropout (twice),
  Dense 1 sigmoid.
* mnist_test_1000.npz                    the first 1,000 MNIST test images
  (uint8, 28x28) and labels: the MNIST models' test inputs.
* <model>_expected.npz                   each model's own outputs on its test
  inputs, computed by the framework: ``logits`` (the output layer's
  activation replaced by identity; the imported graph drops a final softmax
  and outputs these) and ``probs`` (the framework's output as saved: softmax
  or sigmoid); digits_mlp_expected.npz also holds its inputs ``x``
  (float32, all 1,797 rows, 64 features in [0, 1]) and labels ``y``.

Accuracies are printed and recorded in README.md by hand.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
TEST_COUNT = 1000
SEED = 2024


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes: the MNIST distribution format."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX type {data[2]:#x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(directory: str):
    def part(name):
        return read_idx(os.path.join(directory, f"{name}-images-idx3-ubyte.gz")), \
            read_idx(os.path.join(directory, f"{name}-labels-idx1-ubyte.gz")).astype(np.int64)

    return part("train"), part("t10k")


def keras_logits(model, x, output_layer: str) -> np.ndarray:
    """The model's outputs with the output layer's activation (softmax, sigmoid) replaced by identity."""
    out = model.get_layer(output_layer)
    saved = out.activation
    out.activation = keras.activations.linear
    try:
        return np.asarray(model.predict(x, verbose=0, batch_size=500), dtype=np.float64)
    finally:
        out.activation = saved


def mnist_convnet() -> keras.Model:
    """The keras.io "Simple MNIST convnet" example, layer for layer."""
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax", name="out"),
    ], name="mnist_convnet")


def mobilenet_mini() -> keras.Model:
    """A small MobileNet (v1) style net: depthwise-separable blocks with batch norm and relu6.

    Batch norm momentum 0.9 (Keras' default 0.99 leaves the moving statistics
    far from the data after the few hundred steps trained here).
    """
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)  # 14x14
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu6")(x)
    for i, (filters, stride) in enumerate([(16, 1), (32, 2), (32, 1)], start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"dw{i}_relu6")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
        x = layers.Activation("relu6", name=f"pw{i}_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    outputs = layers.Dense(10, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs, name="mobilenet_mini")


def digits_mlp(features: int) -> keras.Model:
    return keras.Sequential([
        keras.Input(shape=(features,)),
        layers.Dense(32, name="fc1"),
        layers.BatchNormalization(name="bn1"),
        layers.Activation("relu", name="relu1"),
        layers.Dropout(0.3, name="drop1"),
        layers.Dense(16, name="fc2"),
        layers.BatchNormalization(name="bn2"),
        layers.Activation("relu", name="relu2"),
        layers.Dropout(0.3, name="drop2"),
        layers.Dense(1, activation="sigmoid", name="out"),
    ], name="digits_mlp")


class LeNet5(torch.nn.Module):
    """LeNet-5 (LeCun et al. 1998) with relu and max pooling, for 28x28 inputs (padding 2 on the first conv)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(16 * 5 * 5, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def train_keras(model, x, y, x_test, y_test, epochs: int, loss: str, batch_size: int = 128) -> float:
    model.compile(loss=loss, optimizer="adam", metrics=["accuracy"])
    start = time.time()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_split=0.1, verbose=2)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"{model.name}: trained in {time.time() - start:.0f} s; test accuracy {accuracy:.4f}", flush=True)
    return float(accuracy)


def train_lenet(x, y, x_test, y_test, epochs: int) -> tuple[LeNet5, float]:
    torch.manual_seed(SEED)
    net = LeNet5()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            batch = order[i:i + 128]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
        print(f"lenet5: epoch {epoch + 1} loss {loss.item():.4f}", flush=True)
    net.eval()
    with torch.no_grad():
        accuracy = (net(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy() == y_test).mean()
    print(f"lenet5: trained in {time.time() - start:.0f} s; test accuracy {accuracy:.4f}", flush=True)
    return net, float(accuracy)


def trained_keras(name: str, build, retrain: bool, data, **fit) -> tuple:
    """(model, test accuracy): loaded from name.keras if it is here (and not retrain), else built and trained."""
    path = os.path.join(HERE, f"{name}.keras")
    x, y, x_test, y_test = data
    if os.path.exists(path) and not retrain:
        model = keras.models.load_model(path)
        accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
        print(f"{name}: loaded {path}; test accuracy {accuracy:.4f}", flush=True)
        return model, accuracy
    model = build()
    accuracy = train_keras(model, x, y, x_test, y_test, **fit)
    model.save(path)
    return model, accuracy


def save_expected(name: str, **arrays) -> None:
    np.savez_compressed(os.path.join(HERE, f"{name}_expected.npz"), **arrays)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--mnist", default=DEFAULT_MNIST, help="directory of the MNIST IDX files")
    parser.add_argument("--retrain", action="store_true", help="train Keras models whose files exist")
    args = parser.parse_args()
    torch.set_num_threads(2)

    (train_x, train_y), (test_x, test_y) = load_mnist(args.mnist)
    x_nhwc = (train_x.astype(np.float32) / 255.0)[..., None]
    test_nhwc = (test_x.astype(np.float32) / 255.0)[..., None]
    zoo_nhwc = test_nhwc[:TEST_COUNT]
    np.savez_compressed(os.path.join(HERE, "mnist_test_1000.npz"), images=test_x[:TEST_COUNT],
                        labels=test_y[:TEST_COUNT])
    accuracy = {}

    if "mnist_convnet" in args.models:
        keras.utils.set_random_seed(SEED)
        n = 30000
        convnet, accuracy["mnist_convnet"] = trained_keras(
            "mnist_convnet", mnist_convnet, args.retrain, (x_nhwc[:n], train_y[:n], test_nhwc, test_y),
            epochs=3, loss="sparse_categorical_crossentropy")
        convnet.save(os.path.join(HERE, "mnist_convnet.h5"))
        save_expected("mnist_convnet", logits=keras_logits(convnet, zoo_nhwc, "out"),
                      probs=np.asarray(convnet.predict(zoo_nhwc, verbose=0), dtype=np.float64))

    if "mobilenet_mini" in args.models:
        keras.utils.set_random_seed(SEED)
        n = 20000
        mobilenet, accuracy["mobilenet_mini"] = trained_keras(
            "mobilenet_mini", mobilenet_mini, args.retrain, (x_nhwc[:n], train_y[:n], test_nhwc, test_y),
            epochs=3, loss="sparse_categorical_crossentropy", batch_size=64)
        save_expected("mobilenet_mini", logits=keras_logits(mobilenet, zoo_nhwc, "out"),
                      probs=np.asarray(mobilenet.predict(zoo_nhwc, verbose=0), dtype=np.float64))

    if "lenet5" in args.models:
        n = 30000
        net, accuracy["lenet5"] = train_lenet(x_nhwc[:n].transpose(0, 3, 1, 2), train_y[:n],
                                              test_nhwc.transpose(0, 3, 1, 2), test_y, epochs=3)
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), os.path.join(HERE, "lenet5.onnx"), opset_version=18,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                          external_data=False)
        with torch.no_grad():
            logits = net(torch.tensor(zoo_nhwc.transpose(0, 3, 1, 2))).double().numpy()
        save_expected("lenet5", logits=logits, probs=torch.softmax(torch.tensor(logits), 1).numpy())

    if "digits_mlp" in args.models:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        keras.utils.set_random_seed(SEED)
        digits = load_digits()
        dx = (digits.data / 16.0).astype(np.float32)  # pixel counts 0..16
        dy = (digits.target >= 5).astype(np.int64)
        tr_x, te_x, tr_y, te_y = train_test_split(dx, dy, test_size=0.3, random_state=SEED, stratify=dy)
        mlp, accuracy["digits_mlp"] = trained_keras(
            "digits_mlp", lambda: digits_mlp(dx.shape[1]), args.retrain, (tr_x, tr_y, te_x, te_y), epochs=20,
            loss="binary_crossentropy", batch_size=32)
        probs = np.asarray(mlp.predict(dx, verbose=0), dtype=np.float64)
        save_expected("digits_mlp", x=dx, y=dy, probs=probs, logits=keras_logits(mlp, dx, "out"))

    for name, acc in accuracy.items():
        print(f"{name:16s} test accuracy {acc:.4f}")
    for name in sorted(os.listdir(HERE)):
        print(f"{name:28s} {os.path.getsize(os.path.join(HERE, name)):>9,} bytes")


MODELS = ("mnist_convnet", "mobilenet_mini", "lenet5", "digits_mlp")

if __name__ == "__main__":
    main()
