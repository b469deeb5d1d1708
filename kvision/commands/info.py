"""``kvision info``: one network's metadata, cost profile and layer summary."""

from __future__ import annotations


def add_parser(subparsers):
    """Add the ``info`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("info", help="one network, with its layer summary")
    p.add_argument("name")
    p.add_argument("--no-summary", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Build the network at its default size and print what the registry knows of it."""
    from kvision.models import create, get_info, profile

    info = get_info(args.name)
    model = create(info.name)
    p = profile(model)
    print(f"{info.name}  ({info.builder.__name__}, family {info.family}, {info.year})")
    print(f"paper:        {info.paper}")
    print(f"key idea:     {info.key_idea}")
    print(f"input:        {'x'.join(str(d) for d in p.input_shape)} "
          f"(minimum {info.min_size})")  # SegNet's default is 352x480
    print(f"parameters:   {p.total_params:,} ({p.trainable_params:,} trainable); "
          f"reference {info.num_params:,} ({info.params_convention}, {info.params_source})")
    print(f"GFLOPs:       {p.gflops:.3f} (multiply-accumulates)")
    print(f"weights:      {p.size_mb:.1f} MB float32; ImageNet: {imagenet_weights(info)}")
    for line in accuracy_lines(info):
        print(line)
    stages = ", ".join(f"{s}: {n}" for s, n in sorted(info.stage_outputs.items()))
    print(f"stages:       {stages or '-'}")
    if not args.no_summary:
        model.summary(line_length=110)
    return 0


def imagenet_weights(info) -> str:
    """What ``weights="imagenet"`` loads: keras.applications' file, a torchvision or
    timm checkpoint (its URL), another package's, or none."""
    if info.keras_application:
        return f"keras.applications.{info.keras_application}"
    if info.checkpoint:
        return f"{info.checkpoint['publisher']} checkpoint {info.checkpoint['url']}"
    return "the builder's own converter (see its docstring)" if info.imagenet_loader else "none"


def _figure(accuracy) -> str:
    top5 = "-" if accuracy["top5"] is None else f"{accuracy['top5']:.1f}"
    return f"top-1 {accuracy['top1']:.1f} / top-5 {top5} % ({accuracy['source']})"


def accuracy_lines(info) -> list:
    """The published ImageNet accuracy ``kvision list`` shows (that of the weights
    ``weights="imagenet"`` loads), and the paper's where it differs."""
    if info.accuracy is None:
        return ["accuracy:     none published (not trained on ImageNet)"]
    lines = [f"accuracy:     {_figure(info.accuracy)}"]
    if info.paper_accuracy:
        lines.append(f"  the paper: {_figure(info.paper_accuracy)}")
    return lines
