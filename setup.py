"""Deepfake-resistant face verification: training, conversion, runtime, benchmarks."""
from setuptools import setup

setup(
    name="fakeaware-faceverify",
    version="0.1.0",
    description="Deepfake-resistant face verification: ResNet-34 triplet training, "
    "ONNX/TensorRT conversion and a fast runtime",
    python_requires=">=3.10",
    packages=["training", "convert", "engine", "engine.backends", "bench"],
    package_data={"engine": ["models/*.onnx", "models/*.json", "models/*.md",
                             "models/detector/*.onnx", "models/detector/*.md"]},
    install_requires=[
        # CPU wheel: .ci/run installs torch==2.13.0 first so this range installs nothing more.
        "torch>=2.8",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pillow>=10",  # header-only size check before OpenCV decodes (decompression bombs)
        "tqdm>=4.60",
        "safetensors>=0.4",
        "pyyaml>=6",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "matplotlib>=3.7",
    ],
    extras_require={
        # Fastest CPU path (AMX/VNNI); absent on ARM, where ONNX Runtime is used.
        "openvino": ["openvino>=2024.4"],
        # CPU-side conversion: simplifier + ModelOpt without its GPU-only [onnx] extra.
        "convert": ["onnxslim>=0.1.40", "nvidia-modelopt>=0.27", "onnx-graphsurgeon", "onnxconverter-common",
                    # the CPU part of ModelOpt's [onnx] extra; onnxscript is also torch's ONNX exporter
                    "onnxscript", "polygraphy>=0.53.4", "lief"],
        "cuda": ["cuda-python>=12.3"],
        # Only to remake the shipped detector ONNX (python -m convert.detector), never at run time.
        "detector": ["tflite2onnx>=0.4.1"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "scikit-learn>=1.3"],
    },
)
