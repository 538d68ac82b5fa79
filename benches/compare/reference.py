#!/usr/bin/env python3
"""The PyTorch side of `make bench-compare`: the reference formulas in PyTorch eager (CPU).

Run by `examples/bench_compare.rs` once per case, in a fresh process:

    python benches/compare/reference.py --case "db 256x18211" --threads 2
    python benches/compare/reference.py --list

Each case is a named function in CASES that builds its inputs and returns a `step` closure
doing one forward + backward. The process then measures, exactly as the Rust side does:

- peak memory: VmRSS is read once the inputs exist (after a garbage collection), the peak
  (VmHWM) is reset to it by writing 5 to /proc/self/clear_refs, one cold forward + backward
  runs, and the peak RSS delta is VmHWM minus that baseline (kB);
- time: 3 warm-up steps, then the median of repeated steps (enough for about 1.5 s, at least 5),
  each on a fresh leaf holding the same values, measured with perf_counter around forward +
  backward only;
- the loss value and the sum of |gradient| of the last step, so that the driver can check that
  both sides computed the same thing.

It prints one line: RESULT<TAB>case<TAB>median ms<TAB>peak kB<TAB>value<TAB>sum |grad|<TAB>steps.

Inputs are made bit for bit as the Rust side makes them (a splitmix64 counter, see `uniform`),
so the values can be compared.
"""

import argparse
import gc
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Inputs, identical to `examples/bench_compare.rs`.

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def uniform(seed, n):
    """`n` uniforms in [0, 1) from splitmix64 over the counter `seed * 2^32 + i + 1`, with 53
    random bits each: the same f64 values the Rust side computes."""
    with np.errstate(over="ignore"):
        state = (np.uint64((seed << 32) & MASK64) + np.arange(1, n + 1, dtype=np.uint64)) * np.uint64(GOLDEN)
        x = state
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def long_tail(classes):
    """Class counts falling like a power law (about 1.2 labels per document), and N_train."""
    train_num = 7769 if classes <= 100 else 100_000
    ranks = np.arange(1, classes + 1, dtype=np.float64)
    freq = np.clip(np.floor(0.4 * train_num * ranks**-1.4), 1, train_num - 1)
    return freq, float(train_num)


def multilabel_inputs(n, classes):
    """f32 logits uniform in [-6, 6), f32 targets drawn with the class priors, f64 counts."""
    freq, train_num = long_tail(classes)
    z = (12.0 * uniform(1, n * classes) - 6.0).astype(np.float32).reshape(n, classes)
    p = np.tile(freq / train_num, n)
    y = (uniform(2, n * classes) < p).astype(np.float32).reshape(n, classes)
    return torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(freq), train_num


# ----------------------------------------------------------------------------------------------
# The reference formulas (shared/spec/losses.md section 1, in the order of the
# Distribution-Balanced code), with PyTorch's own operators, as
# crates/loss-multilabel/tests/fixtures/generate.py computes them.

PRESETS = {
    "bce": {},
    "focal": {"focal": (2.0, 0.5)},
    "db": {"rebalance": (0.1, 10.0, 0.9), "ntr": (0.05, 2.0), "focal": (2.0, 0.5)},
}


def resample_loss(logits, y, freq, train_num, preset):
    """Mean of the multi-label loss of `preset` over `[N, C]` logits."""
    parts = PRESETS[preset]
    dt = logits.dtype
    w = None
    if "rebalance" in parts:
        alpha, beta, mu = parts["rebalance"]
        y64 = y.to(torch.float64)
        freq_inv = 1.0 / freq
        repeat_rate = (y64 * freq_inv).sum(dim=1, keepdim=True)
        r = freq_inv / repeat_rate  # +inf on rows without positives: W = alpha + 1
        w = torch.sigmoid(beta * (r - mu)) + alpha
    x = logits
    if "ntr" in parts:
        kappa, lam = parts["ntr"]
        nu = -kappa * torch.log(train_num / freq - 1.0)
        x = x + nu.to(dt)
        x = x * (1 - y) * lam + x * y
        if w is not None:
            y64 = y.to(torch.float64)
            w = w / lam * (1 - y64) + w * y64
    elem = y * F.softplus(-x) + (1 - y) * F.softplus(x)
    if "focal" in parts:
        gamma, alpha = parts["focal"]
        factor = torch.exp(-gamma * F.softplus(torch.where(y == 1, x, -x)))
        alpha_t = torch.where(y == 1, alpha, 1 - alpha)
        elem = alpha_t * factor * elem
    if w is not None:
        elem = elem * w.to(dt)
    return elem.mean()


def multilabel_case(preset, n, classes):
    z, y, freq, train_num = multilabel_inputs(n, classes)

    def step():
        leaf = z.detach().requires_grad_(True)
        loss = resample_loss(leaf, y, freq, train_num, preset)
        loss.backward()
        return loss, leaf

    return step


CASES = {
    "bce 256x18211": lambda: multilabel_case("bce", 256, 18211),
    "focal 256x18211": lambda: multilabel_case("focal", 256, 18211),
    "db 32x90": lambda: multilabel_case("db", 32, 90),
    "db 256x90": lambda: multilabel_case("db", 256, 90),
    "db 32x18211": lambda: multilabel_case("db", 32, 18211),
    "db 256x18211": lambda: multilabel_case("db", 256, 18211),
}

# ----------------------------------------------------------------------------------------------
# DBNET CASES
#
# For the DBNet helper: add "dbnet 2x160x160" and "dbnet 8x640x640" here, each a function of its
# own that builds its inputs (with `uniform`, so that the Rust side can make the same ones) and
# returns a `step` closure doing one forward + backward of the reference DBNet loss and
# returning `(loss, leaf)` (the leaf holds the gradient); then register them in CASES, e.g.
#
#     def dbnet_case(n, h, w):
#         ...
#         return step
#
#     CASES["dbnet 2x160x160"] = lambda: dbnet_case(2, 160, 160)
#
# ----------------------------------------------------------------------------------------------


class MMOCRDBLoss:
    """MMOCR 0.x's `DBLoss` (mmocr/models/textdet/losses/db_loss.py) with `bbce_loss=True`:
    balanced BCE with online hard-negative mining by `torch.topk` on the probability map, Dice on
    the binary map, masked L1 on the threshold map; targets already at the prediction's size."""

    def __init__(self, alpha=5.0, beta=10.0, negative_ratio=3.0, eps=1e-6):
        self.alpha, self.beta, self.negative_ratio, self.eps = alpha, beta, negative_ratio, eps

    def balance_bce_loss(self, pred, gt, mask):
        positive = gt * mask
        negative = (1 - gt) * mask
        positive_count = int(positive.float().sum())
        negative_count = min(int(negative.float().sum()), int(positive_count * self.negative_ratio))
        assert gt.max() <= 1 and gt.min() >= 0
        assert pred.max() <= 1 and pred.min() >= 0
        loss = F.binary_cross_entropy(pred, gt, reduction="none")
        positive_loss = loss * positive.float()
        negative_loss = loss * negative.float()
        negative_loss, _ = torch.topk(negative_loss.view(-1), negative_count)
        return (positive_loss.sum() + negative_loss.sum()) / (
            positive_count + negative_count + self.eps
        )

    def dice_loss(self, pred, gt, mask):
        pred = pred.contiguous().view(pred.size()[0], -1)
        gt = gt.contiguous().view(gt.size()[0], -1)
        mask = mask.contiguous().view(mask.size()[0], -1)
        pred = pred * mask
        gt = gt * mask
        a = torch.sum(pred * gt)
        b = torch.sum(pred)
        c = torch.sum(gt)
        return 1 - (2 * a) / (b + c + self.eps)

    def l1_thr_loss(self, pred, gt, mask):
        return torch.abs((pred - gt) * mask).sum() / (mask.sum() + self.eps)

    def __call__(self, preds, gt_shrink, gt_shrink_mask, gt_thr, gt_thr_mask):
        pred_prob, pred_thr, pred_db = preds[:, 0, :, :], preds[:, 1, :, :], preds[:, 2, :, :]
        gt_shrink = (gt_shrink > 0).float()
        loss_prob = self.balance_bce_loss(pred_prob, gt_shrink, gt_shrink_mask)
        loss_db = self.dice_loss(pred_db, gt_shrink, gt_shrink_mask)
        loss_thr = self.l1_thr_loss(pred_thr, gt_thr, gt_thr_mask)
        return dict(loss_prob=self.alpha * loss_prob, loss_db=loss_db, loss_thr=self.beta * loss_thr)


def dbnet_inputs(n, h, w):
    """f32 maps of `n` images of `h × w`: probabilities in [0.01, 0.99), thresholds in
    [0.2, 0.8), binary map in [0, 1); about 10 % text, 5 % of the shrink mask ignored, threshold
    targets in [0.3, 0.7) and a threshold mask over about 30 % of the pixels."""
    pixels = n * h * w
    image = lambda seed, f: torch.from_numpy(f(uniform(seed, pixels)).astype(np.float32)).view(n, h, w)
    preds = torch.stack(
        [image(11, lambda u: 0.01 + 0.98 * u), image(12, lambda u: 0.2 + 0.6 * u), image(13, lambda u: u)],
        dim=1,
    ).contiguous()
    targets = (
        image(14, lambda u: (u < 0.1).astype(np.float64)),
        image(15, lambda u: (u < 0.95).astype(np.float64)),
        image(16, lambda u: 0.3 + 0.4 * u),
        image(17, lambda u: (u < 0.3).astype(np.float64)),
    )
    return preds, targets


def dbnet_case(n, h, w):
    preds, targets = dbnet_inputs(n, h, w)
    db_loss = MMOCRDBLoss()

    def step():
        leaf = preds.detach().requires_grad_(True)
        losses = db_loss(leaf, *targets)
        loss = losses["loss_prob"] + losses["loss_db"] + losses["loss_thr"]
        loss.backward()
        return loss, leaf

    return step


CASES["dbnet 2x160x160"] = lambda: dbnet_case(2, 160, 160)
CASES["dbnet 8x640x640"] = lambda: dbnet_case(8, 640, 640)

# ----------------------------------------------------------------------------------------------


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak():
    """Resets VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(CASES))
        return 0
    if args.case not in CASES:
        print(f"unknown case {args.case!r}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    step = CASES[args.case]()
    gc.collect()
    base = status_kb("VmRSS")
    peak_kb = -1
    if reset_peak():
        kept = step()
        peak_kb = status_kb("VmHWM") - base
        del kept
    else:
        step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    estimate = time.perf_counter() - t0
    repeats = max(5, min(2000, int(1.5 / max(estimate, 1e-6))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss, leaf = step()
        times.append(time.perf_counter() - t0)
    value = float(loss.item())
    grad_l1 = float(leaf.grad.abs().sum(dtype=torch.float64))
    print(f"RESULT\t{args.case}\t{1e3 * statistics.median(times):.6f}\t{peak_kb}\t{value!r}\t{grad_l1!r}\t{repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
