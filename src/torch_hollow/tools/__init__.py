"""The torch-hollow command's tooling (demo, bench, its recipes); import torch_hollow skips it."""
