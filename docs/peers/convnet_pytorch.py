"""The book's convnet in PyTorch, timed beside `kerno train --model convnet`.

Same data (MNIST's IDX files), model, optimizer, batch size and epochs; Keras'
initialisation (Glorot-uniform kernels, zero biases) and RMSprop settings.
Usage: python convnet_pytorch.py MNIST_DIR [THREADS] [SEED]
"""

import gzip
import sys
import time

import numpy as np
import torch
from torch import nn


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    folder = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = torch.tensor(idx(f"{folder}/train-images-idx3-ubyte.gz"), dtype=torch.float32)
    y = torch.tensor(idx(f"{folder}/train-labels-idx1-ubyte.gz"), dtype=torch.long)
    xt = torch.tensor(idx(f"{folder}/t10k-images-idx3-ubyte.gz"), dtype=torch.float32)
    yt = torch.tensor(idx(f"{folder}/t10k-labels-idx1-ubyte.gz"), dtype=torch.long)
    x, xt = (x / 255).unsqueeze(1), (xt / 255).unsqueeze(1)

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    total = 0.0
    for epoch in range(5):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        total += seconds
        print(f"epoch {epoch + 1}: {seconds:.2f} s, last batch loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"torch {torch.__version__}, {threads} threads: 5 epochs in {total:.1f} s, test_acc {accuracy:.4f}")


if __name__ == "__main__":
    main()
