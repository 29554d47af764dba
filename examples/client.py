"""A client's process: query the served model with three MNIST test images.

Run examples/serve.py first. Only this process sees the images' logits.
"""

import pysmpc as sy
from pysmpc.models import load_samples

images, labels = load_samples()  # the first MNIST test images, shipped with pysmpc

cluster = sy.Cluster(sy.Worker("localhost:4000", auto_managed=False),
                     sy.Worker("localhost:4001", auto_managed=False),
                     sy.Worker("localhost:4002", auto_managed=False))
client = sy.Client()
client.connect_to_model(batch_input_shape=(1, 28, 28, 1), batch_output_shape=(1, 10), cluster=cluster)

for image, label in zip(images[:3], labels[:3]):
    logits = client.query_model(image)  # reconstructed here, and only here
    print(f"Actual: {label}, predicted: {logits.argmax()}")
