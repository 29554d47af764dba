"""The model owner's process: share the CNN to three workers and serve three queries.

    python examples/serve.py            # then, in another terminal: python examples/client.py

Uses model.hdf5 from examples/create_model.py if it exists, else the model
shipped with pysmpc.
"""

import os

import pysmpc as sy
from pysmpc.models import shipped_model_path

path = "model.hdf5" if os.path.exists("model.hdf5") else shipped_model_path()
model = sy.load_model(path)

julia = sy.Worker(host="localhost:4000", auto_managed=True)
greg = sy.Worker(host="localhost:4001", auto_managed=True)
me = sy.Worker(host="localhost:4002", auto_managed=True)
cluster = sy.Cluster(julia, greg, me)
cluster.start()

model.share(cluster)  # the weights leave this process as shares only
print(f"serving {path} for 3 requests", flush=True)
model.serve(num_requests=3)  # blocks until three clients were answered
model.stop_sharing()
cluster.stop()
