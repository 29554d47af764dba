# A client's process, from R: query the served model with three MNIST test images.
#
# Run serve.R first. Only this process sees the images' logits.
# PYSMPC_HOSTS="h0,h1,h2" replaces localhost:4000..4002, as in serve.R.

# convert = FALSE keeps pysmpc's NumPy arrays as Python objects, indexed from 0
# as in Python. (Debian 12's reticulate 1.28 cannot convert NumPy 2 arrays to R.)
sy <- reticulate::import("pysmpc", convert = FALSE)

hosts <- strsplit(Sys.getenv("PYSMPC_HOSTS", "localhost:4000,localhost:4001,localhost:4002"), ",")[[1]]

samples <- sy$models$load_samples()  # the first MNIST test images, shipped with pysmpc
images <- samples[0]
labels <- samples[1]

cluster <- sy$Cluster(sy$Worker(hosts[1], auto_managed = FALSE),
                      sy$Worker(hosts[2], auto_managed = FALSE),
                      sy$Worker(hosts[3], auto_managed = FALSE))
client <- sy$Client()
client$connect_to_model(batch_input_shape = c(1, 28, 28, 1), batch_output_shape = c(1, 10), cluster = cluster)

for (i in 0:2) {
  logits <- client$query_model(images[i])  # reconstructed here, and only here
  cat(sprintf("Actual: %s, predicted: %s\n", labels[i], logits$argmax()))
}
