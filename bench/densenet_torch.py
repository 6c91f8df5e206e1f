#!/usr/bin/env python3
"""PyTorch twin of crates/models/benches/densenet.rs: same model, sizes, batches, steps,
threads and optimiser, medians over the timed steps; one JSON line per run. torch is not a medret dependency; the
script bench/densenet.sh installs it into a scratch venv."""
import argparse
import json
import statistics
import time

import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("--arch", default="densenet121")
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--train-batch", type=int, default=16)
ap.add_argument("--infer-batch", type=int, default=64)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.sh)")
ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                help="bf16: inference under torch.autocast (oneDNN's bf16, AMX where the CPU has it)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
if a.arch == "tiny":
    make = lambda: torchvision.models.densenet.DenseNet(8, (2, 3, 2, 2), 16, 2, 0, 5)
    classes = 5
else:
    make = lambda: torchvision.models.densenet121()
    classes = 1000

dev = torch.device(a.device)


def sync():
    # CUDA runs asynchronously: a timing must wait for the work it timed.
    if dev.type == "cuda":
        torch.cuda.synchronize()


model = make().eval().to(dev)
x = torch.rand(a.infer_batch, 3, a.size, a.size, device=dev)
import contextlib
cast = (torch.autocast(a.device, dtype=torch.bfloat16) if a.precision == "bf16"
        else contextlib.nullcontext())
with torch.no_grad(), cast:
    model(x)
    sync()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t)
    infer = statistics.median(times)

model = make().train().to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.rand(a.train_batch, 3, a.size, a.size, device=dev)
y = torch.arange(a.train_batch, device=dev) % classes
loss_fn = torch.nn.CrossEntropyLoss()


def step():
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    loss.item()


step()
times = []
for _ in range(a.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
train = statistics.median(times)
print(json.dumps({"framework": f"pytorch {torch.__version__} on {a.device}", "arch": a.arch, "size": a.size,
                  "threads": a.threads, "precision": a.precision, "train_batch": a.train_batch,
                  "train_step_ms": round(train * 1e3, 1), "infer_batch": a.infer_batch,
                  "infer_img_per_s": round(a.infer_batch / infer, 2)}))
