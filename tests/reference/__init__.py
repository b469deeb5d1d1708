"""NumPy references of the zoo's networks, independent of kvision.

``ops`` holds the building blocks as torch defines them (NCHW, OIHW kernels);
``torchvision_nets`` and ``timm_nets`` each network's forward, written from
torchvision's and timm's module code (the ``__init__`` module order and the
``forward`` methods), taking a torch state dict of NumPy arrays; ``paper_nets`` the
networks no such library has (ZFNet, Darknet-53, LeNet-5), from their papers'
layout tables. Nothing here imports kvision.
"""
