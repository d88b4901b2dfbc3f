"""Where bytes come from and go: storage through fsspec (and redaction), retries, model weights, image
decoding and the few numbers the drift check keeps of each image, the output layout (every path under OUTPUT)
and the output's writer lease."""
