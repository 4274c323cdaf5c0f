"""fastreid-plugins: vehicle re-id methods (MFG-Net, MBFN, SVRN, CLIP-SENet) as FastReID projects.

FastReID itself is not a dependency here: its metadata pins torch 1.13.1. Install it with
``pip install --no-deps fastreid==1.4.0`` (the Makefile does) or put a FastReID checkout on
PYTHONPATH.
"""

from setuptools import find_packages, setup

setup(
    name="fastreid-plugins",
    version="0.1.0",
    description="Vehicle re-identification methods as drop-in FastReID plugins",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fastreid_plugins", "fastreid_plugins.*"]),
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.13",
        "torchvision>=0.14",
        "faiss-cpu",
        "yacs",
        "opencv-python-headless",
        "scikit-learn",
        "tabulate",
        "tensorboard",
        "termcolor",
        "tqdm",
        "matplotlib",  # python -m fastreid_plugins.reproduce report: the PNG chart (Agg backend)
        "gdown",  # imported at module level by FastReID's backbones (never used to download here)
        "Pillow",
        "numpy",
    ],
    extras_require={
        "dev": ["pytest>=7", "onnx", "onnxruntime", "Cython", "open_clip_torch", "ruff"],
        "clip": ["transformers>=4.30"],
        # python -m fastreid_plugins.tools.export --format openvino, extract --backend openvino
        # (openvino ~180 MB installed; onnx / onnxruntime also export / run ONNX and int8 QDQ)
        "deploy": ["openvino>=2024.0", "onnx", "onnxruntime"],
        # fastreid_plugins.gallery (docs/gallery.md): the pymilvus client and Milvus Lite, the
        # embedded engine (3.x wheels ship no engine binary: <3); milvus-lite imports
        # pkg_resources, gone from setuptools 81
        "gallery": ["pymilvus>=2.5,<2.6", "milvus-lite>=2.5.1,<3", "setuptools<81"],
        # a real Milvus 2.3.5 standalone server in a wheel (no dependencies): the gallery's
        # server tests (tests/test_gallery.py) and bench/gallery_speed.py start one locally
        "gallery-server": ["milvus==2.3.5"],
    },
)
