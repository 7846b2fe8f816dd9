"""keras_ebm: hybrid discriminative-generative energy-based image models in Keras 3."""

from setuptools import find_packages, setup

# Pins that were seen to resolve and run together (TF 2.21 / Keras 3.15). tf-keras is needed by
# tensorflow-probability's TF substrate and importlib_resources by tensorflow-datasets, neither of
# which declares it (see README, "Dependencies").
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "tf-keras==2.21.0",
    "tensorflow-probability==0.25.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",
    "absl-py==2.5.1",
    "scikit-learn==1.9.1",
    "gin-config==0.5.0",
    "tensorboard==2.21.0",  # tensorflow 2.21 no longer installs it; tf.summary needs it
    "matplotlib>=3.8",
    "numpy>=1.26",
]

setup(
    name="keras_ebm",
    version="0.1.0",
    description=(
        "Hybrid discriminative-generative energy-based image models for Keras 3 / TensorFlow: "
        "JEM, JEM++, SADA-JEM, HDGE, GMMC, CLEL and the softmax baseline"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="keras_ebm developers",
    license="Apache-2.0",  # an SPDX expression (setuptools deprecates the License :: classifiers)
    license_files=["LICENSE"],
    # No url / project_urls: the project has no public home page yet (set them when it has one).
    keywords=[
        "energy-based models",
        "JEM",
        "SADA-JEM",
        "HDGE",
        "GMMC",
        "CLEL",
        "keras",
        "tensorflow",
        "out-of-distribution detection",
        "SGLD",
    ],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    packages=find_packages(include=["keras_ebm", "keras_ebm.*"]),
    # train.py / eval.py of a checkout are thin wrappers of the same functions.
    entry_points={
        "console_scripts": [
            "keras-ebm-train = keras_ebm.scripts.train:run",
            "keras-ebm-eval = keras_ebm.scripts.eval:run",
        ]
    },
    python_requires=">=3.11",  # keras 3.15 and scikit-learn 1.9 require 3.11 (README, Dependencies)
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The test extra includes the ONNX converter and runtime: the export tests round-trip through them.
        # ruff: the linter and formatter CI runs (.ci/run) and .pre-commit-config.yaml pins (same version).
        "test": ["pytest>=8", "pytest-xdist>=3", "tf2onnx>=1.17", "onnx>=1.14", "onnxruntime>=1.17", "ruff==0.17.6"],
        # ONNX export (`export_model(..., onnx=True)`, run_training.export_onnx): tf2onnx, the
        # converter Keras' own `Model.export(format="onnx")` uses on TensorFlow, and onnxruntime.
        "onnx": ["tf2onnx>=1.17", "onnx>=1.14", "onnxruntime>=1.17"],
        # keras-cv 0.9 works with Keras 3.15 but is frozen (2024) and pulls in keras-core and
        # kagglehub; keras_ebm uses Keras-3 core layers + tf.image instead (README, "Dependencies").
        "kerascv": ["keras-cv==0.9.0"],
        # Reading pytorch-fid's FID Inception weights (.pth), or converting them once to the .npz
        # that evaluation reads without torch (docs/fid.md). A CPU build is enough.
        "torch": ["torch>=2.0"],
        # The documentation site (mkdocs.yml; `mkdocs build --strict` in .ci/run): pinned to the
        # versions seen to build it without a warning.
        "docs": ["mkdocs==1.6.1", "mkdocstrings[python]==1.0.8", "mkdocstrings-python==2.0.11", "griffelib==2.4.1"],
    },
)
