#!/usr/bin/env python3
"""Writes the DenseNet training-mode gradient fixture: the tiny parity network
(densenet_tiny_weights.safetensors) in training mode (BatchNorm on batch statistics),
loss = sum(logits * W) for a fixed W, and PyTorch's gradients of that loss with respect
to the input and to every parameter, under torchvision's names.

Not needed to run the tests (the fixture is committed); needed only to regenerate it:

    /tmp/torchenv/bin/pip install torch torchvision safetensors numpy
    /tmp/torchenv/bin/python tools/make_densenet_grad_fixture.py --dir crates/models/tests/fixtures
"""
import argparse
import os

import torch
from safetensors.torch import load_file, save_file
from torchvision.models.densenet import DenseNet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    net = DenseNet(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16,
                   bn_size=2, num_classes=5)
    net.load_state_dict(load_file(os.path.join(a.dir, "densenet_tiny_weights.safetensors")))
    net.train()
    x = load_file(os.path.join(a.dir, "densenet_tiny_io.safetensors"))["input"].clone()
    x.requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(x.shape[0], 5, generator=g)
    logits = net(x)
    loss = (logits * w).sum()
    loss.backward()
    out = {"loss_weights": w.contiguous(), "loss": loss.detach().reshape(1),
           "grad.input": x.grad.contiguous()}
    for k, p in net.named_parameters():
        out["grad." + k] = p.grad.contiguous()
    save_file(out, os.path.join(a.dir, "densenet_tiny_grads.safetensors"))
    print(f"loss {loss.item():.6f}, {len(out) - 3} parameter gradients")


if __name__ == "__main__":
    main()
