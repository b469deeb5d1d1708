"""A NumPy reference of torchvision's networks, independent of kvision.

``ops`` holds the building blocks as torch defines them (NCHW, OIHW kernels);
``torchvision_nets`` each network's forward, written from torchvision's module code
(``torchvision/models/*.py``: the ``__init__`` module order and the ``forward``
methods), taking a torch state dict of NumPy arrays. Nothing here imports kvision.
"""
