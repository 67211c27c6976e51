"""The networks and their checkpoint files (safetensors + model.json), shared by
training/, convert/ and the runtime's PyTorch backend; needs the ``[train]`` extra (torch)."""
