"""Training speed on this machine: a seed-style loop, this repo's notebook with each objective, and GEMM floors.

    python3 tasks.py bench                       # 3 rounds of 5 epochs each (about 17 minutes on 2 CPU cores)
    python3 tasks.py bench --rounds 5 --epochs 10
    (or: .venv/bin/python -m benchmarks.benchmark, from the repo)

1. seed-style baseline: the loop a reader writes from the spec (torchvision MNIST + ToTensor,
   DataLoader(batch_size=128, shuffle=True), Sigmoid decoder, F.binary_cross_entropy + KL, Adam).
2. this repo: the notebook itself, executed headless (`headless.execute`); seconds per epoch and
   the test loss are read from the metrics.json it writes, so nothing here can drift from it.
3. GEMM floor: only the matrix products one training epoch computes at batch 128, with
   preallocated operands: for each of the seven linear layers the forward product and the weight
   gradient, and the input gradient for every layer but the first (training never needs the
   gradient of the pixels). Its rate is compared with one large square GEMM, the machine's peak.
4. IWAE with k = 5 and k = 50 (`objective = "iwae"`), and k = 5 with `gradient = "dreg"`, the
   notebook again, on the first 16,384 images, each against its own GEMM floor: the encoder's
   products once per image, the decoder's k times (k draws of z per image, as one batch of k x 128 rows).

Seconds per epoch are the median over epochs, the first excluded (warm-up). The contenders run in
rounds, interleaved (ABAB...), so that each round's ratio compares neighbours in time on a machine
whose speed drifts; the table gives each ratio's median and its range over the rounds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from harness import REPO, headless, mnist, stop_by_raising
from harness.files import read_metrics, write_json
from harness.provenance import cpu_name
from harness.tables import BENCHMARK, benchmark_table

RESULTS = BENCHMARK  # the figures of the last run, for README

LAYERS = [(784, 512), (512, 256), (256, 20), (256, 20), (20, 256), (256, 512), (512, 784)]
DECODER = 4  # LAYERS[DECODER:] are the decoder's: k rows per image with IWAE
IWAE = {"this repo, IWAE k = 5": 5, "this repo, IWAE k = 5, DReG": 5, "this repo, IWAE k = 50": 50}
IWAE_IMAGES = 16_384


class SeedVAE(nn.Module):
    """The model as a reader writes it from the spec, Sigmoid output and all."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 512), nn.Linear(512, 256)
        self.fc_mu, self.fc_log_var = nn.Linear(256, 20), nn.Linear(256, 20)
        self.fc3, self.fc4, self.fc5 = nn.Linear(20, 256), nn.Linear(256, 512), nn.Linear(512, 784)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        mu, log_var = self.fc_mu(h), self.fc_log_var(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return torch.sigmoid(self.fc5(F.relu(self.fc4(F.relu(self.fc3(z)))))), mu, log_var


def seed_loss(recon, mu, log_var, x):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())


def seed_style(epochs, data_dir):
    torch.manual_seed(0)
    train = datasets.MNIST(data_dir, train=True, download=False, transform=transforms.ToTensor())
    test = datasets.MNIST(data_dir, train=False, download=False, transform=transforms.ToTensor())
    loader = DataLoader(train, batch_size=128, shuffle=True)
    model = SeedVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        total = 0.0
        for x, _ in loader:
            x = x.view(-1, 784)
            loss = seed_loss(*model(x), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        seconds.append(time.perf_counter() - started)
        print(f"  seed-style epoch {epoch}: {total / len(train):.2f} train loss, {seconds[-1]:.2f} s", flush=True)
    model.eval()
    with torch.no_grad():
        test_total = sum(
            seed_loss(*model(x.view(-1, 784)), x.view(-1, 784)).item() for x, _ in DataLoader(test, batch_size=1000)
        )
    return seconds, test_total / len(test)


def this_repo(epochs, data_dir, k=1, gradient="plain"):
    """The notebook itself, run headless (`headless.execute`) with these epochs into a temporary folder."""
    with tempfile.TemporaryDirectory() as results:
        parameters = {"epochs": epochs, "results_dir": results, "data_dir": str(data_dir), "iw_samples": 1}
        if k > 1:
            parameters.update(objective="iwae", train_samples=k, train_size=IWAE_IMAGES, gradient=gradient)
        started = time.perf_counter()
        try:
            headless.execute(parameters, echo=lambda text: None)
        finally:
            stop_by_raising()  # the run's event loop left SIGTERM and SIGHUP at their defaults (a silent end)
        wall = time.perf_counter() - started
        metrics = read_metrics(results)
    for row in metrics["epochs"]:
        print(f"  this repo (k = {k}) epoch {row['epoch']}: {row['train_loss']:.2f} train loss, {row['seconds']:.2f} s")
    return [row["seconds"] for row in metrics["epochs"]], metrics["test_loss"], wall


def gemm_floor(n_train=60_000, batch=128, k=1):
    sizes = [batch] * (n_train // batch) + ([n_train % batch] if n_train % batch else [])
    rows = [lambda b: b] * DECODER + [lambda b: b * k] * (len(LAYERS) - DECODER)  # per layer, for a batch of b
    operands = {}
    for b in set(sizes):
        operands[b] = [
            (torch.randn(rows[layer](b), i), torch.randn(o, i), torch.randn(rows[layer](b), o),
             torch.empty(rows[layer](b), o), torch.empty(rows[layer](b), i), torch.empty(o, i), layer > 0)
            for layer, (i, o) in enumerate(LAYERS)
        ]  # fmt: skip

    def epoch():
        for b in sizes:
            for x, w, grad, y, dx, dw, needs_input_grad in operands[b]:
                torch.mm(x, w.t(), out=y)  # forward
                torch.mm(grad.t(), x, out=dw)  # gradient for the weights
                if needs_input_grad:
                    torch.mm(grad, w, out=dx)  # gradient for the layer's input

    epoch()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - started)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    gflops = 10 * 2 * n**3 / (time.perf_counter() - started) / 1e9
    flops = sum(2 * rows[layer](b) * i * o * (3 if layer else 2) for b in sizes for layer, (i, o) in enumerate(LAYERS))
    return statistics.median(times), gflops, flops


def spread(values) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def ratios_of(rounds) -> dict:
    """Each ratio of two contenders, per round (neighbours in time), as its median and range over the rounds."""
    return {
        "this repo is faster than the baseline by": spread([r["seed-style baseline"] / r["this repo"] for r in rounds]),
        "this repo takes this many times the GEMM floor": spread([r["this repo"] / r["GEMM floor"] for r in rounds]),
        **{
            f"{name.removeprefix('this repo, ')} takes this many times its GEMM floor": spread(
                [r[name] / r[f"GEMM floor, IWAE k = {k}"] for r in rounds]
            )
            for name, k in IWAE.items()
        },
        "the GEMM floor's share of peak GEMM": spread([r["floor_gflops"] / r["peak_gflops"] for r in rounds]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each loop in each round (>= 2; default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the contenders interleaved (default 3)")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    args = parser.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up) and --rounds at least 1")
    data_dir = mnist.ensure_mnist(args.data_dir)
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}; {args.rounds} rounds of {args.epochs} epochs each", flush=True)
    names = ["this repo", "seed-style baseline", *IWAE]
    rounds, losses = [], {name: [] for name in names}
    for number in range(args.rounds):  # ABAB...: each round's ratio compares neighbours in time
        times = {}
        floor, peak, flops = gemm_floor()
        times["GEMM floor"] = floor
        for name in names if number % 2 == 0 else names[::-1]:
            print(f"round {number + 1}: {name} ...", flush=True)
            if name in IWAE:
                times[f"GEMM floor, IWAE k = {IWAE[name]}"] = gemm_floor(IWAE_IMAGES, k=IWAE[name])[0]
            seconds, loss, *_ = (
                this_repo(args.epochs, data_dir, IWAE.get(name, 1), "dreg" if "DReG" in name else "plain")
                if name != "seed-style baseline"
                else seed_style(args.epochs, data_dir)
            )
            times[name], losses[name] = statistics.median(seconds[1:]), [*losses[name], loss]
        times["peak_gflops"], times["floor_gflops"] = peak, flops / floor / 1e9
        rounds.append(times)
    floors = {f"GEMM floor, IWAE k = {k}": None for k in IWAE.values()}  # one floor a k: DReG shares k = 5's
    contenders = [*names[:2], "GEMM floor", *IWAE, *floors]
    figures = {
        "machine": machine,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "per_round": rounds,
        "contenders": {
            name: {
                "seconds_per_epoch": statistics.median(r[name] for r in rounds),
                "images": IWAE_IMAGES if "IWAE" in name else 60_000,
                **({"test_loss": statistics.median(losses[name])} if name in losses else {}),
            }
            for name in contenders
        },
        "ratios": ratios_of(rounds),
        "peak_gflops": statistics.median(r["peak_gflops"] for r in rounds),
    }
    print("\n" + benchmark_table(figures))
    write_json(RESULTS, figures)
    print(f"\nwrote {RESULTS.relative_to(REPO)} (README's table: python3 tasks.py tables --write)")


if __name__ == "__main__":
    stop_by_raising()
    try:
        main()
    except (KeyboardInterrupt, headless.RunFailed, mnist.MNISTUnavailableError) as error:  # one line, no traceback
        stop = isinstance(error, KeyboardInterrupt) or getattr(error, "code", 0) > 128  # a stop, or a run's stop
        kept = f"{RESULTS.relative_to(REPO)} is as it was."
        print(f"stopped: {kept}" if stop else f"error: {error}\n{kept}", file=sys.stderr)
        sys.exit(getattr(error, "code", 130) if stop else 1)  # 128 + the signal, as a run's stop
