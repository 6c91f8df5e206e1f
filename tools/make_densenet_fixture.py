#!/usr/bin/env python3
"""Writes the DenseNet parity fixture: seeded random torchvision weights (with non-trivial
BatchNorm running statistics), a few inputs, and PyTorch's eval-mode outputs.

Not needed to run the tests (the fixture is committed); needed only to regenerate it:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision safetensors numpy
    /tmp/torchenv/bin/python tools/make_densenet_fixture.py --out crates/models/tests/fixtures

With --full it also writes a full DenseNet-121 (1000 classes, 224x224) fixture outside the
repository, for a one-off check that is reported, not stored (32 MB of weights).
"""
import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file
from torchvision.models.densenet import DenseNet


def build(growth, blocks, init, bn_size, classes, seed):
    torch.manual_seed(seed)
    net = DenseNet(growth_rate=growth, block_config=blocks, num_init_features=init,
                   bn_size=bn_size, num_classes=classes)
    # torchvision initialises BN to weight 1, bias 0, mean 0, var 1: a parity test against
    # that would not see a swapped or ignored parameter. Randomise all of them.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def write(net, size, n, out, prefix, seed):
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 3, size, size, generator=g)
    with torch.no_grad():
        f = net.features(x)
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(f), (1, 1)), 1)
        logits = net.classifier(pooled)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(out, f"{prefix}_weights.safetensors"))
    save_file({"input": x.contiguous(), "features": f.contiguous(), "pooled": pooled.contiguous(),
               "logits": logits.contiguous()}, os.path.join(out, f"{prefix}_io.safetensors"))
    params = sum(p.numel() for p in net.parameters())
    print(f"{prefix}: {params} parameters, input {tuple(x.shape)}, features {tuple(f.shape)}, "
          f"pooled |max| {pooled.abs().max():.4f}, logits |max| {logits.abs().max():.4f}")


def write_png_case(net, size, out, seed):
    """PNG inputs at the network size (so not resized) and PyTorch's pooled features for
    them under torchvision's preprocessing: /255, grey repeated to RGB, ImageNet mean/std."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    grey = (rng.random((size, size)) * 255).astype(np.uint8)
    rgb = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(os.path.join(img_dir, "a_grey.png"))
    Image.fromarray(rgb, mode="RGB").save(os.path.join(img_dir, "b_rgb.png"))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    xs = []
    for a in (np.stack([grey] * 3, axis=-1), rgb):
        t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)
        xs.append((t - mean) / std)
    x = torch.stack(xs)
    with torch.no_grad():
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(net.features(x)), (1, 1)), 1)
    save_file({"pooled": pooled.contiguous()}, os.path.join(out, "densenet_tiny_png_pooled.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--full", help="folder for the full DenseNet-121 fixture (not committed)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    # Reduced configuration: every structural element of DenseNet-121 (4 blocks, 3
    # transitions, bottleneck layers, compression 0.5), small enough to commit.
    tiny = build(growth=8, blocks=(2, 3, 2, 2), init=16, bn_size=2, classes=5, seed=0)
    write(tiny, size=64, n=2, out=a.out, prefix="densenet_tiny", seed=0)
    write_png_case(tiny, size=64, out=a.out, seed=2)
    if a.full:
        full = build(growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, classes=1000, seed=1)
        write(full, size=224, n=2, out=a.full, prefix="densenet121", seed=1)


if __name__ == "__main__":
    main()
