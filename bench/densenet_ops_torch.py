"""The PyTorch twin of crates/models/examples/densenet_ops.rs: the same operations at the
same shapes (DenseNet-121 block 1 at 128 px, batch 8), forward and forward + backward.
Run by bench/densenet_ops.sh."""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--reps", type=int, default=5)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

n, c_in, mid, growth, hw = 8, 256, 128, 32, 32
conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
conv3 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)
bn = nn.BatchNorm2d(c_in).train()
pool = nn.AvgPool2d(2, 2)


def timed(f):
    f()
    t = time.perf_counter()
    for _ in range(a.reps):
        f()
    return (time.perf_counter() - t) * 1e3 / a.reps


def row(name, fwd):
    def only():
        with torch.no_grad():
            fwd().item()

    def both():
        fwd().backward()

    print(json.dumps({"framework": f"pytorch {torch.__version__}", "op": name, "threads": a.threads,
                      "forward_ms": round(timed(only), 3), "forward_backward_ms": round(timed(both), 3)}))


x_in = torch.randn(n, c_in, hw, hw)
x_mid = torch.randn(n, mid, hw, hw)
row("conv1x1 256->128", lambda: conv1(x_in.clone().requires_grad_()).sum())
row("conv1x1 256->128 as matmul", lambda: (conv1.weight.view(1, mid, c_in) @ x_in.clone().requires_grad_().view(n, c_in, hw * hw)).sum())
row("conv3x3 128->32", lambda: conv3(x_mid.clone().requires_grad_()).sum())
row("batchnorm(train)+relu 256", lambda: F.relu(bn(x_in.clone().requires_grad_())).sum())
row("avgpool 2x2 256", lambda: pool(x_in.clone().requires_grad_()).sum())
base = torch.randn(n, 64, hw, hw)
news = [torch.randn(n, growth, hw, hw) for _ in range(6)]


def cats():
    f = base.clone().requires_grad_()
    for t in news:
        f = torch.cat([f, t.clone().requires_grad_()], 1)
    return f.sum()


row("6 concatenations 64->256", cats)
