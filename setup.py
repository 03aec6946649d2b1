"""hpatk: protein localisation in multi-stain fluorescence microscopy.

The four top-level folders are mapped into the implicit namespace package ``hpatk``;
``import core`` must fail in an installed environment (see DESIGN.md).
"""

from setuptools import setup

VERSION = "0.1.0"

BUILTIN_PLUGINS = [
    "enhance = hpatk.plugins.enhance",
    "augment_classic = hpatk.plugins.augment_classic",
    "augment_gan = hpatk.plugins.augment_gan",
    "backbones = hpatk.plugins.backbones",
    "losses = hpatk.plugins.losses",
]

# `hpatk serve` (pip install 'hpatk[serve]')
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9",
         "prometheus-client>=0.20"]

PACKAGES = {
    "hpatk.core": "core",
    "hpatk.plugins": "plugins",
    "hpatk.cli": "cli",
    "hpatk.export": "export",
}


def _subpackages() -> list[str]:
    """Every package below the four mapped folders, named in the hpatk namespace."""
    import os

    found = []
    for pkg, folder in PACKAGES.items():
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(root, folder)
                found.append(pkg if rel == "." else pkg + "." + rel.replace(os.sep, "."))
    return found


setup(
    name="hpatk",
    version=VERSION,
    description="Protein subcellular localisation toolkit: CLAHE, DCGAN augmentation, "
    "transfer learning, ONNX export (Human Protein Atlas layout)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=_subpackages(),
    package_dir=PACKAGES,
    package_data={**{pkg: ["py.typed"] for pkg in PACKAGES},
                  "hpatk.export": ["py.typed", "serve_page.html"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0",
        "kornia>=0.7.3",
        "onnx>=1.16",
        "onnxruntime-gpu>=1.18",
        "onnxscript>=0.1",
        "click>=8.1",
        "pluggy>=1.5",
        "h5py>=3.10",
        "hdf5plugin>=4.0",  # blosc-lz4 for `hpatk cache build --compression blosc-lz4`
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "iterative-stratification>=0.1.7",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # linalg.sqrtm: the feature Fréchet distance (hpatk gan evaluate)
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "pyyaml>=6.0",
    ],
    extras_require={
        "serve": SERVE,
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.22", "ruff>=0.5",
                 *SERVE, "httpx>=0.27", "psutil>=5.9", "playwright>=1.40",
                 "tritonclient>=2.40"],
        # `make docs`: the reference site (docs/mkdocs.yml)
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.26",
                 "mkdocs-click>=0.8"],
    },
    entry_points={
        "console_scripts": ["hpatk = hpatk.cli.main:main"],
        "hpatk": BUILTIN_PLUGINS,
    },
)
