# The model owner's process, from R: share the CNN to three workers and serve three queries.
#
#   Rscript serve.R        # then, in another terminal: Rscript client.R
#
# Uses model.hdf5 from examples/create_model.py if it exists, else the model
# shipped with pysmpc. PYSMPC_HOSTS="h0,h1,h2" replaces localhost:4000..4002
# (the tests use it to pick free ports).

sy <- reticulate::import("pysmpc")

hosts <- strsplit(Sys.getenv("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002"), ",")[[1]]

path <- if (file.exists("model.hdf5")) "model.hdf5" else sy$models$shipped_model_path()
model <- sy$load_model(path)

julia <- sy$Worker(host = hosts[1], auto_managed = TRUE)
greg <- sy$Worker(host = hosts[2], auto_managed = TRUE)
me <- sy$Worker(host = hosts[3], auto_managed = TRUE)
cluster <- sy$Cluster(julia, greg, me)
cluster$start()

model$share(cluster)  # the weights leave this process as shares only
cat("serving", format(path), "for 3 requests\n")
flush(stdout())
model$serve(num_requests = 3L)  # blocks until three clients were answered
model$stop_sharing()
cluster$stop()
