"""PyTorch backend: the model straight from training, on the CPU or on CUDA.

On CUDA the batch travels through :class:`engine.cuda.IOPipeline` (pinned
host buffer -> device buffer on our own stream -> model -> device buffer ->
pinned host buffer), the same path the TensorRT backend uses, so that path
can be tested on a GPU machine without TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.backends.base import Backend, BackendError

PRECISIONS = ("fp32", "bf16", "fp16")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, *, precision: str = "fp32", device: str | None = None, max_batch: int = 32,
                 threads: int | None = None, timing: bool = False):
        """``model``: a FaceEmbedder, or a folder with ``model.safetensors`` + ``model.json``."""
        try:
            import torch
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: pip install '.[train]' "
                               "(or use --backend openvino/onnxruntime)") from None

        if precision not in PRECISIONS:
            raise BackendError(f"torch: unknown precision {precision!r}; use one of {PRECISIONS}")
        model_path = None
        if isinstance(model, (str, Path)):
            from nets.checkpoint import load_model

            model_path = Path(model)
            model = load_model(model_path)
        device = device or "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendError("torch: device 'cuda' asked for but torch.cuda.is_available() is False")
        elif device != "cpu":
            raise BackendError(f"torch: unknown device {device!r}; use cpu or cuda")
        elif precision == "fp16":
            raise BackendError("torch: fp16 is for CUDA; on the CPU use fp32 or bf16")
        if device == "cpu" and threads:
            torch.set_num_threads(threads)  # process-wide: PyTorch has one intra-op pool
        config = model.config
        self._torch = torch
        self._model = model.eval().to(device)
        self._dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._pipeline = None
        super().__init__(precision=precision, max_batch=max_batch, input_size=config.input_size,
                         embedding_dim=config.embedding_dim, model_path=model_path, device=device)
        if device.startswith("cuda"):
            from engine.cuda import IOPipeline

            torch.cuda.init()  # the primary context that cuda-python's allocations share
            s, d = config.input_size, config.embedding_dim
            self._pipeline = IOPipeline((max_batch, s, s, 3), np.uint8, (max_batch, d), np.float32, timing=timing)
            self._stream = torch.cuda.ExternalStream(self._pipeline.stream.handle)
            self._device_in = torch.as_tensor(self._pipeline.device_in, device=device)
            self._device_out = torch.as_tensor(self._pipeline.device_out, device=device)

    @property
    def last_timings_ms(self) -> dict:
        return self._pipeline.last_timings_ms if self._pipeline else {}

    def _forward(self, x):
        torch = self._torch
        if self._dtype is None:
            return self._model(x)
        with torch.autocast(device_type=x.device.type, dtype=self._dtype):
            return self._model(x).float()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self._pipeline is None:
            with torch.inference_mode():
                return self._forward(torch.from_numpy(batch)).numpy()

        def compute(n: int) -> None:
            # Enqueued on our stream, between the pipeline's H2D and D2H copies.
            with torch.inference_mode(), torch.cuda.stream(self._stream):
                self._device_out[:n].copy_(self._forward(self._device_in[:n]))

        return self._pipeline.run(batch, compute)

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self._model = None
        super().close()
