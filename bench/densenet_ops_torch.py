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


def row(name, fwd, leaves):
    """Forward (recording the graph, as burn's autodiff backend does) and backward, timed
    apart. The leaves are made once, outside the loop, on both sides; gradients are
    cleared outside the timed region."""
    mods = [conv1, conv3, bn]

    def clear():
        for t in leaves:
            t.grad = None
        for m in mods:
            m.zero_grad(set_to_none=True)

    def once():
        clear()
        t0 = time.perf_counter()
        y = fwd()
        y.item()  # the forward is done
        t1 = time.perf_counter()
        y.backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    once()
    f = b = 0.0
    for _ in range(a.reps):
        tf, tb = once()
        f += tf
        b += tb
    f, b = f * 1e3 / a.reps, b * 1e3 / a.reps
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "op": name, "threads": a.threads,
                      "forward_ms": round(f, 3), "backward_ms": round(b, 3),
                      "forward_backward_ms": round(f + b, 3)}))


x_in = torch.randn(n, c_in, hw, hw).requires_grad_()
x_mid = torch.randn(n, mid, hw, hw).requires_grad_()
row("conv1x1 256->128", lambda: conv1(x_in).sum(), [x_in])
row("conv1x1 256->128 as matmul", lambda: (conv1.weight.view(1, mid, c_in) @ x_in.view(n, c_in, hw * hw)).sum(), [x_in])
row("conv1x1 256->128, ours", lambda: conv1(x_in).sum(), [x_in])
row("conv3x3 128->32", lambda: conv3(x_mid).sum(), [x_mid])
row("conv3x3 128->32, ours", lambda: conv3(x_mid).sum(), [x_mid])
row("batchnorm(train)+relu 256", lambda: F.relu(bn(x_in)).sum(), [x_in])
row("batchnorm(train)+relu 256, fused", lambda: F.relu(bn(x_in)).sum(), [x_in])
row("avgpool 2x2 256", lambda: pool(x_in).sum(), [x_in])
row("avgpool 2x2 256, ours", lambda: pool(x_in).sum(), [x_in])
base = torch.randn(n, 64, hw, hw).requires_grad_()
news = [torch.randn(n, growth, hw, hw).requires_grad_() for _ in range(6)]


def cats():
    f = base
    for t in news:
        f = torch.cat([f, t], 1)
    return f.sum()


row("6 concatenations 64->256", cats, [base] + news)
