"""A client's process: query the served model with three MNIST test images.

Run examples/serve.py first. Only this process sees the images' logits.
PYSMPC_HOSTS="h0,h1,h2" replaces localhost:4000..4002.
"""

import os

import pysmpc as sy
from pysmpc.models import load_samples

images, labels = load_samples()  # the first MNIST test images, shipped with pysmpc

hosts = os.environ.get("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002").split(",")
cluster = sy.Cluster(sy.Worker(hosts[0], auto_managed=False),
                     sy.Worker(hosts[1], auto_managed=False),
                     sy.Worker(hosts[2], auto_managed=False))
client = sy.Client()
client.connect_to_model(batch_input_shape=(1, 28, 28, 1), batch_output_shape=(1, 10), cluster=cluster)

for image, label in zip(images[:3], labels[:3]):
    logits = client.query_model(image)  # reconstructed here, and only here
    print(f"Actual: {label}, predicted: {logits.argmax()}", flush=True)
