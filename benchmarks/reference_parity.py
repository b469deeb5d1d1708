"""kvision's torchvision/timm-layout networks against torch's own forward.

For every registered network with a ``torch_layout``: the torchvision or timm module
is built with random weights and random BatchNorm statistics, its state dict is
written with ``torch.save``, loaded into the kvision builder through ``weights=`` (the
user's path: kvision reads the file without torch), and both networks run on the same
random images. Printed per network: the largest absolute difference of the logits,
the same divided by the largest logit, and the two forwards' CPU times. Then the
registry's torchvision metadata (checkpoint URL, accuracy, parameter count) is
compared with what torchvision's weight enums ship.

Needs torch, torchvision and timm next to kvision (``pip install torch torchvision
timm``; CPU wheels are enough). Long: ~20 networks at their default sizes.

    python benchmarks/reference_parity.py [--size N] [--batch 2] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

# kvision name -> (publisher, constructor name, constructor keywords)
TORCH_MODELS = {
    "alexnet": ("torchvision", "alexnet", {}),
    "vgg11_bn": ("torchvision", "vgg11_bn", {}),
    "vgg13_bn": ("torchvision", "vgg13_bn", {}),
    "vgg16_bn": ("torchvision", "vgg16_bn", {}),
    "vgg19_bn": ("torchvision", "vgg19_bn", {}),
    "resnet18": ("torchvision", "resnet18", {}),
    "resnet34": ("torchvision", "resnet34", {}),
    "resnext50_32x4d": ("torchvision", "resnext50_32x4d", {}),
    "resnext101_32x8d": ("torchvision", "resnext101_32x8d", {}),
    "squeezenet1_0": ("torchvision", "squeezenet1_0", {}),
    "squeezenet1_1": ("torchvision", "squeezenet1_1", {}),
    "shufflenet_v2_x1_0": ("torchvision", "shufflenet_v2_x1_0", {}),
    "googlenet": ("torchvision", "googlenet", {"aux_logits": False, "init_weights": True}),
    "se_resnet50": ("timm", "seresnet50", {}),
    "se_resnext50_32x4d": ("timm", "seresnext50_32x4d", {}),
    "inception_v4": ("timm", "inception_v4", {}),
}


def import_torch():
    """torch, torchvision and timm. torchvision's wheel from PyPI is built against
    torch's CUDA libraries: beside a CPU-only torch its C extension (nms, roi_align:
    detection ops no classifier uses) does not load, and registering those ops'
    fake kernels fails at import. The registration is skipped then, and said."""
    import torch
    import torch.library

    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for module in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[module]
        register_fake = torch.library.register_fake
        torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
        try:
            import torchvision
        finally:
            torch.library.register_fake = register_fake
        print(f"note: torchvision's C ops did not load ({error}); its detection ops "
              f"are unavailable, its classifiers are plain torch.nn modules")
    import timm

    return torch, torchvision, timm


def torch_module(name, seed):
    """The reference module of ``name`` in inference mode, with random BatchNorm
    statistics and affine parameters (identity BatchNorm would hide a swapped key)."""
    import timm
    import torch
    import torchvision

    publisher, constructor, kwargs = TORCH_MODELS[name]
    torch.manual_seed(seed)
    if publisher == "timm":
        module = timm.create_model(constructor, pretrained=False)
    else:
        module = getattr(torchvision.models, constructor)(weights=None, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                n = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return module.eval()


def compare(name, size, batch, seed=0):
    """Largest |kvision - torch| of the logits on ``batch`` random images, its ratio
    to the largest |logit|, and each side's forward CPU time (s)."""
    import keras
    import torch

    import kvision

    module = torch_module(name, seed)
    x = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.pth")
        torch.save(module.state_dict(), path)
        model = kvision.models.create(name, weights=path, input_shape=(size, size, 3),
                                      classifier_activation=None)
    start = time.process_time()
    with torch.no_grad():
        expected = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    torch_cpu = time.process_time() - start
    start = time.process_time()
    got = keras.ops.convert_to_numpy(model(x, training=False))
    keras_cpu = time.process_time() - start
    keras.backend.clear_session()
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: kvision {got.shape} vs torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    return diff, diff / float(np.max(np.abs(expected))), torch_cpu, keras_cpu


def metadata_check():
    """The registry's figures taken from torchvision against its weight enums: URL
    (where kvision has the checkpoint), acc@1/acc@5 and parameter count. Returns
    the lines to print."""
    import torchvision

    from kvision.models import get_info

    from kvision.models import list_models

    lines = []
    for name in list_models(task="classification"):
        info = get_info(name)
        if not (info.accuracy and info.accuracy["source"].startswith("torchvision")):
            continue
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        same = {"url": info.checkpoint is None or weights.url == info.checkpoint["url"],
                "acc@1": metrics["acc@1"] == info.accuracy["top1"],
                "acc@5": metrics["acc@5"] == info.accuracy["top5"],
                "num_params": weights.meta["num_params"] == info.num_params}
        verdict = "all equal" if all(same.values()) else "DIFFERENT: " + ", ".join(
            k for k, v in same.items() if not v)
        lines.append(f"{name:<20} acc@1 {metrics['acc@1']:.3f} acc@5 {metrics['acc@5']:.3f} "
                     f"params {weights.meta['num_params']:>11,}  {verdict}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="networks (all of TORCH_MODELS if none)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (each network's default size if not given)")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        torch, torchvision, timm = import_torch()
    except ImportError as error:
        print(f"reference_parity: needs torch, torchvision and timm ({error}); "
              f"pip install torch torchvision timm", file=sys.stderr)
        return 2
    from kvision.models import get_info

    unknown = [n for n in args.names if n not in TORCH_MODELS]
    if unknown:
        print(f"reference_parity: no torch reference for {unknown}; expected some of "
              f"{sorted(TORCH_MODELS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"timm {timm.__version__}; {cpu}; CPU times are process time (all threads)")
    print(f"{'network':<20}{'publisher':>12}{'input':>7}{'max |diff|':>13}"
          f"{'/ max |logit|':>15}{'torch CPU s':>13}{'kvision CPU s':>15}")
    worst = 0.0
    for name in args.names or TORCH_MODELS:
        info = get_info(name)
        if info.torch_layout is None:
            print(f"{name:<20} skipped: no torch_layout registered in this kvision")
            continue
        size = args.size or info.default_size
        diff, relative, torch_cpu, keras_cpu = compare(name, size, args.batch)
        worst = max(worst, relative)
        print(f"{name:<20}{TORCH_MODELS[name][0]:>12}{size:>7}{diff:>13.2e}{relative:>15.2e}"
              f"{torch_cpu:>13.2f}{keras_cpu:>15.2f}", flush=True)
    print(f"largest relative difference: {worst:.2e}")
    print("\nregistry metadata against torchvision's IMAGENET1K_V1 weight enums:")
    print("\n".join(metadata_check()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
