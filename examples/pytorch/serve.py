"""The model owner's process: serve a PyTorch model privately to three clients.

    python examples/pytorch/train.py          # writes mnist_torch.pt
    python examples/pytorch/serve.py          # then, in another terminal: python examples/pytorch/client.py

pysmpc.from_torch exports the module to ONNX and imports it; the Model
takes NCHW batches, as the module does. Before sharing, the owner checks
that pysmpc's plaintext forward pass and its fixed-point twin agree with
PyTorch. PYSMPC_HOSTS="h0,h1,h2" replaces localhost:4000..4002, and
PYSMPC_TORCH_MODEL the weights file.
"""

import os

import torch
from train import MnistNet

import pysmpc as sy
from pysmpc.models import load_samples

hosts = os.environ.get("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002").split(",")
weights = os.environ.get("PYSMPC_TORCH_MODEL", "mnist_torch.pt")

net = MnistNet()
net.load_state_dict(torch.load(weights))
model = sy.from_torch(net, torch.zeros(1, 1, 28, 28))  # export options go to torch.onnx.export as keywords
print(model.summary())

images, _ = load_samples()
batch = images.transpose(0, 3, 1, 2)  # NCHW, as PyTorch takes it
with torch.no_grad():
    torch_logits = net.eval()(torch.tensor(batch, dtype=torch.float32)).double().numpy()
print(f"largest logit difference to PyTorch: {abs(model.predict(batch) - torch_logits).max():.1e} (float), "
      f"{abs(model.predict_fixed_point(batch) - torch_logits).max():.1e} (fixed point)")

cluster = sy.Cluster(*(sy.Worker(host=host, auto_managed=True) for host in hosts))
cluster.start()
model.share(cluster)  # the weights leave this process as shares only
print(f"serving {weights} for 3 requests", flush=True)
model.serve(num_requests=3)  # blocks until three clients were answered
model.stop_sharing()
cluster.stop()
