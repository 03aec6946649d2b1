"""hpatk.plugins: the built-in plugins, loaded through the ``hpatk`` entry-point group
exactly as a third-party plugin is. Hook modules import torch/timm lazily."""
