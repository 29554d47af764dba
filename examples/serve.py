"""The model owner's process: share the CNN to three workers and serve three queries.

    python examples/serve.py            # then, in another terminal: python examples/client.py

Uses model.hdf5 from examples/create_model.py if it exists, else the model
shipped with pysmpc. PYSMPC_HOSTS="h0,h1,h2" replaces localhost:4000..4002
(the tests use it to pick free ports).
"""

import os

import pysmpc as sy
from pysmpc.models import shipped_model_path

path = "model.hdf5" if os.path.exists("model.hdf5") else shipped_model_path()
model = sy.load_model(path)

hosts = os.environ.get("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002").split(",")
julia = sy.Worker(host=hosts[0], auto_managed=True)
greg = sy.Worker(host=hosts[1], auto_managed=True)
me = sy.Worker(host=hosts[2], auto_managed=True)
cluster = sy.Cluster(julia, greg, me)
cluster.start()

model.share(cluster)  # the weights leave this process as shares only
print(f"serving {path} for 3 requests", flush=True)
model.serve(num_requests=3)  # blocks until three clients were answered
model.stop_sharing()
cluster.stop()
