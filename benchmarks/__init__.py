"""dnd_bench: images/s of the runtime against the PyTorch reference sampler, and where the time goes (`dnd bench`)."""
