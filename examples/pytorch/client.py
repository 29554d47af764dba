"""A client's process: query the served PyTorch model with three MNIST test images.

Run examples/pytorch/serve.py first. The images go out as NCHW arrays, the
layout the PyTorch model takes (the client transposes them to the engine's
NHWC before sharing them). Only this process sees the logits.
"""

import os

import pysmpc as sy
from pysmpc.models import load_samples

hosts = os.environ.get("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002").split(",")
images, labels = load_samples()  # (16, 28, 28, 1) pixels / 255 and their labels, shipped with pysmpc
images = images.transpose(0, 3, 1, 2)  # (16, 1, 28, 28): what the PyTorch model takes

cluster = sy.Cluster(*(sy.Worker(host, auto_managed=False) for host in hosts))
client = sy.Client()
client.connect_to_model(batch_input_shape=(1, 1, 28, 28), batch_output_shape=(1, 10), cluster=cluster,
                        input_layout="NCHW")

for image, label in zip(images[:3], labels[:3]):
    logits = client.query_model(image)  # reconstructed here, and only here
    print(f"Actual: {label}, predicted: {logits.argmax()}", flush=True)
