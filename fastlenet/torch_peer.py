"""PyTorch's LeNet-5, timed in its own process for `fastlenet bench`.

Two OpenMP runtimes in one process (Numba's and PyTorch's) fight: a PyTorch
step slows several-fold once a Numba kernel has run in the same process. So PyTorch runs here, in a child process that times blocks of
steps when the parent asks, and the parent interleaves those blocks with its
own. Protocol: argv = x.npy labels.npy threads; stdin lines "step K" or
"infer K"; each answered by one JSON line of K timings in seconds.
"""

import json
import sys
import time

import numpy as np


def lenet5(nn):
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(6, 16, 5), nn.MaxPool2d(2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def main(x_path, labels_path, threads):
    import torch

    torch.set_num_threads(int(threads))
    x, labels = torch.from_numpy(np.load(x_path)), torch.from_numpy(np.load(labels_path))
    model = lenet5(torch.nn)
    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), labels).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    work = {"step": step, "infer": infer}
    print(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        what, count = line.split()
        fn = work[what]
        fn()  # untimed: lets the parent's threads go quiet
        times = []
        for _ in range(int(count)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
