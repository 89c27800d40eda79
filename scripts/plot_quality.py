#!/usr/bin/env python3
"""Plots of `kvsieve eval` results (docs/QUALITY.md).

    plot_quality.py DIR

Reads DIR/ppl.csv, DIR/passkey.csv, DIR/needle.csv, DIR/recall.csv (whichever exist) and
writes:
  DIR/ppl.png               perplexity vs budget per policy, one panel per window, the full
                            cache as a dashed line; linear axis, a policy far above the rest
                            (random) is named in the legend with its range, off the scale
  DIR/ppl_gap.png           the same as the gap to the full cache (second half of the text),
                            linear (negative = better than the full cache)
  DIR/passkey.png, needle.png  accuracy heatmaps, context x compression ratio, one per policy,
                            with the number of cases behind each cell
  DIR/recall.png            attention recall vs budget per policy (one panel per window) and,
                            per layer, where attention goes and recall at the first budget
  DIR/tables.md             the same numbers as Markdown tables (for docs/QUALITY.md)
Needs matplotlib (scripts/requirements.txt).
"""
from __future__ import annotations

import csv
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # policy -> (colour, marker)
    "full": ("black", ""), "qfilters": ("tab:red", "o"), "knorm": ("tab:blue", "s"),
    "streaming": ("tab:green", "^"), "random": ("tab:gray", "x"), "h2o": ("tab:purple", "D"),
    "tova": ("tab:orange", "v"), "snapkv": ("tab:brown", "P"),
}


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ppl_limits(rows: list[dict], key: str) -> tuple[float, float, dict]:
    """Linear y-limits for a perplexity panel that show the policies that are close to the
    full cache; a policy whose values are far above the rest (random) would flatten them all,
    so it is left off the scale and reported as {policy: (lo, hi)} for the legend."""
    vals: dict = defaultdict(list)
    for r in rows:
        if r["policy"] != "full":
            vals[r["policy"]].append(float(r[key]))
    full = [float(r[key]) for r in rows if r["policy"] == "full"]
    base = full + [v for vs in vals.values() for v in vs]
    # off scale: a policy that stretches the range of all the others more than 2.5 times
    off = {}
    for p, vs in vals.items():
        others = [v for q, ws in vals.items() if q != p for v in ws] + full
        if len(others) < 2:
            continue
        r_o = max(others) - min(others)
        r_all = max(max(others), max(vs)) - min(min(others), min(vs))
        if r_o > 0 and r_all > 2.5 * r_o:
            off[p] = (min(vs), max(vs))
    kept = [v for p, vs in vals.items() if p not in off for v in vs] + full
    lo, hi = (min(kept), max(kept)) if kept else (min(base), max(base))
    pad = 0.06 * (hi - lo if hi > lo else abs(hi) + 1)
    return (min(lo - pad, 0) if key != "ppl" else lo - pad), hi + pad, off


def plot_ppl(rows: list[dict], out_dir: str) -> list:
    """ppl.png and ppl_gap.png on linear axes (the gap can be negative: a policy may beat the
    full cache, which a log or symlog axis distorts). Returns the figures' axes (tests)."""
    full = [r for r in rows if r["policy"] == "full"][0]
    windows = sorted({int(r["window"]) for r in rows if r["policy"] != "full"})
    policies = [p for p in dict.fromkeys(r["policy"] for r in rows) if p != "full"]
    made = []
    for key, fname, ylabel in (("ppl", "ppl.png", "perplexity (whole text)"),
                               ("gap_second_half", "ppl_gap.png",
                                "ppl gap to full (second half; < 0: better than full)")):
        lo, hi, off = ppl_limits(rows, key)
        fig, axes = plt.subplots(1, len(windows), figsize=(5.2 * len(windows), 4.2),
                                 squeeze=False, sharey=True)
        for ax, w in zip(axes[0], windows):
            for p in policies:
                pts = sorted((int(r["budget"]), float(r[key])) for r in rows
                             if r["policy"] == p and int(r["window"]) == w)
                if not pts or p in off:
                    continue
                c, m = STYLE.get(p, (None, "."))
                ax.plot([b for b, _ in pts], [v for _, v in pts], marker=m, color=c, label=p)
            for p, (a, b) in off.items():  # an entry in the legend, no line
                c, m = STYLE.get(p, (None, "."))
                ax.plot([], [], marker=m, color=c, ls="none",
                        label=f"{p}: {a:.3g} to {b:.3g}, off the scale")
            if key == "ppl":
                ax.axhline(float(full["ppl"]), color="black", ls="--", lw=1, label="full")
            else:
                ax.axhline(0, color="black", ls="--", lw=1, label="full (0)")
            ax.set_xscale("log", base=2)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("budget (tokens kept per head)")
            ax.set_title(f"window {w}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=8)
        fig.suptitle(f"Generation perplexity under a fixed KV budget ({full['tokens']} tokens)")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=110)
        made.append(axes[0])
        plt.close(fig)
    return made


def plot_retrieval(rows: list[dict], task: str, out_dir: str):
    contexts = sorted({int(r["context"]) for r in rows})
    ratios = sorted({float(r["ratio"]) for r in rows if r["policy"] != "full"})
    policies = [p for p in dict.fromkeys(r["policy"] for r in rows)]
    acc: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        k = (r["policy"], int(r["context"]), float(r["ratio"]))
        acc[k][0] += int(r["correct"])
        acc[k][1] += 1
    n = len(policies)
    cols = min(4, n)
    rws = (n + cols - 1) // cols
    fig, axes = plt.subplots(rws, cols, figsize=(3.6 * cols, 3.4 * rws), squeeze=False)
    fig.subplots_adjust(hspace=0.55, wspace=0.35)
    for i, p in enumerate(policies):
        ax = axes[i // cols][i % cols]
        rs = [0.0] if p == "full" else ratios
        grid = [[acc[(p, c, r)][0] / acc[(p, c, r)][1] if acc[(p, c, r)][1] else float("nan")
                 for r in rs] for c in contexts]
        counts = [[acc[(p, c, r)][1] for r in rs] for c in contexts]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        same = len({k for row in counts for k in row}) == 1
        for yi, row in enumerate(grid):
            for xi, v in enumerate(row):
                # the number of cases behind each cell: in the title when it is the same for
                # every cell, else in the cell
                label = f"{100 * v:.0f}" if same else f"{100 * v:.0f}\nn={counts[yi][xi]}"
                ax.text(xi, yi, label, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels(["x1" if r == 0 else f"x{round(1 / (1 - r))}" for r in rs])
        ax.set_yticks(range(len(contexts)))
        ax.set_yticklabels([f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in contexts])
        ax.set_title(f"{p} ({counts[0][0]} cases per cell)" if same else p)
        if i % cols == 0:
            ax.set_ylabel("context")
        ax.set_xlabel("compression")
    for j in range(n, rws * cols):
        axes[j // cols][j % cols].axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="exact-match accuracy")
    fig.suptitle(f"{task}: accuracy (%) by context and compression ratio "
                 f"(prefill compression, question kept)")
    fig.savefig(os.path.join(out_dir, f"{task}.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return axes


RECALL_POLICIES = ["oracle", "streaming", "knorm", "qfilters", "qfilters-self", "self-preRoPE"]
RECALL_STYLE = {"oracle": ("black", "*"), "qfilters-self": ("tab:pink", "o"),
                "self-preRoPE": ("tab:olive", "o")}


def recall_means(rows: list[dict]) -> dict:
    """(budget, window) -> policy -> mean recall over the KV heads."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for p in RECALL_POLICIES:
            acc[(int(r["budget"]), int(r["window"]))][p].append(float(r[p]))
    return {k: {p: sum(v) / len(v) for p, v in d.items()} for k, d in acc.items()}


def plot_recall(rows: list[dict], out_dir: str) -> None:
    means = recall_means(rows)
    windows = sorted({w for _, w in means})
    budgets = sorted({b for b, _ in means})
    fig, axes = plt.subplots(1, len(windows) + 1, figsize=(5 * (len(windows) + 1), 4.2),
                             squeeze=False)
    for ax, w in zip(axes[0], windows):
        for p in RECALL_POLICIES:
            c, m = RECALL_STYLE.get(p, STYLE.get(p, (None, ".")))
            ax.plot(budgets, [means[(b, w)][p] for b in budgets], marker=m, color=c, label=p,
                    ls="--" if p in ("oracle", "qfilters-self", "self-preRoPE") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (tokens kept per head)")
        ax.set_ylabel("share of attention on kept keys")
        ax.set_title(f"window {w}")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    ax = axes[0][-1]
    b0, w0 = budgets[0], windows[0]
    layers = sorted({int(r["layer"]) for r in rows})
    per: dict = defaultdict(list)
    for r in rows:
        if int(r["budget"]) == b0 and int(r["window"]) == w0:
            per[int(r["layer"])].append(r)
    for key, c, lab in (("last32", "tab:green", "attention on last 32"),
                        ("first4", "tab:gray", "attention on first 4"),
                        ("streaming", "tab:green", f"streaming recall B={b0}"),
                        ("qfilters", "tab:red", f"qfilters recall B={b0} W={w0}")):
        ys = [sum(float(r[key]) for r in per[l]) / len(per[l]) for l in layers]
        ax.plot(layers, ys, color=c, ls=":" if key in ("last32", "first4") else "-",
                marker="." if key == "first4" else None, label=lab)
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1)
    ax.set_title("per layer (mean over KV heads)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Attention recall: share of each query's (full-cache) attention on the keys a "
                 "policy would hold")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "recall.png"), dpi=110)
    plt.close(fig)


def tables(d: str) -> str:
    """Markdown tables of whatever results DIR holds (pasted into docs/QUALITY.md)."""
    out = []
    p = os.path.join(d, "ppl.csv")
    if os.path.exists(p):
        rows = read(p)
        full = [r for r in rows if r["policy"] == "full"][0]
        cfgs = sorted({(int(r["budget"]), int(r["window"])) for r in rows if r["policy"] != "full"})
        pols = [x for x in dict.fromkeys(r["policy"] for r in rows) if x != "full"]
        def table(title: str, cell) -> None:
            """One row per policy, one column per (budget, window); cell(row) -> text."""
            out.append(title + "\n")
            out.append("| policy | " + " | ".join(f"B={b} W={w}" for b, w in cfgs) + " |")
            out.append("|---|" + "---:|" * len(cfgs))
            for pol in pols:
                cells = []
                for b, w in cfgs:
                    m = [r for r in rows if r["policy"] == pol and int(r["budget"]) == b
                         and int(r["window"]) == w]
                    cells.append(cell(m[0]) if m else "")
                out.append(f"| {pol} | " + " | ".join(cells) + " |")
            out.append("")

        for key, title in (("ppl", "perplexity, whole text"),
                           ("ppl_second_half", "perplexity, second half")):
            table(f"{title} (full cache: {float(full[key]):.3f})",
                  lambda r, key=key: f"{float(r[key]):.3f}")
        # first half, from the whole-text and second-half NLLs: N = tokens + 1 text tokens,
        # second half = the predictions of positions >= N // 2 (eval/eval_ppl.c)
        n_all = int(full["tokens"])
        n2 = n_all + 1 - (n_all + 1) // 2

        def first_half(r: dict) -> float:
            return math.exp((math.log(float(r["ppl"])) * n_all
                             - math.log(float(r["ppl_second_half"])) * n2) / (n_all - n2))
        table(f"gap to full, first half (ppl - ppl_full; full cache: {first_half(full):.3f}; "
              "derived from the two columns above)",
              lambda r: f"{first_half(r) - first_half(full):+.3f}")
        table("gap to full, second half (ppl - ppl_full)",
              lambda r: f"{float(r['gap_second_half']):+.3f}")
    p = os.path.join(d, "recall.csv")
    if os.path.exists(p):
        rows = read(p)
        means = recall_means(rows)
        out.append("attention recall (mean over KV heads of the share of each second-half "
                   "query's attention on the keys held)\n")
        out.append("| budget | window | " + " | ".join(RECALL_POLICIES) + " |")
        out.append("|---:|---:|" + "---:|" * len(RECALL_POLICIES))
        for (b, w) in sorted(means):
            out.append(f"| {b} | {w} | " + " | ".join(f"{means[(b, w)][p]:.3f}"
                                                     for p in RECALL_POLICIES) + " |")
        out.append("")
        er = [r for r in rows if r.get("err_oracle", "") != ""]
        if er:
            b0, w0 = er[0]["budget"], er[0]["window"]
            out.append(f"attention output error |o_K - o| / |o| at B={b0} W={w0} (mean over KV "
                       "heads and queries)\n")
            out.append("| layers | " + " | ".join(RECALL_POLICIES) + " |")
            out.append("|---|" + "---:|" * len(RECALL_POLICIES))
            for label, sel in (("all", lambda l: True), ("0", lambda l: l == 0),
                               ("1 and up", lambda l: l > 0)):
                rs = [r for r in er if sel(int(r["layer"]))]
                out.append(f"| {label} | " + " | ".join(
                    f"{sum(float(r['err_' + p]) for r in rs) / len(rs):.3f}"
                    for p in RECALL_POLICIES) + " |")
            out.append("")
    for task in ("passkey", "needle"):
        p = os.path.join(d, f"{task}.csv")
        if not os.path.exists(p):
            continue
        rows = read(p)
        contexts = sorted({int(r["context"]) for r in rows})
        ratios = sorted({float(r["ratio"]) for r in rows if r["policy"] != "full"})
        pols = list(dict.fromkeys(r["policy"] for r in rows))
        n_cases = len({(r["context"], r["depth"]) for r in rows})
        out.append(f"{task}: exact-match accuracy over {n_cases} cases "
                   f"(contexts {', '.join(str(c) for c in contexts)} x depths "
                   f"{', '.join(sorted({r['depth'] for r in rows}, key=float))}%); "
                   "in brackets: share of the needle's KV entries kept\n")
        out.append("| policy | " + " | ".join(f"x{round(1 / (1 - r))}" for r in ratios) + " |")
        out.append("|---|" + "---:|" * len(ratios))
        for pol in pols:
            cells = []
            for r in ([0.0] * len(ratios) if pol == "full" else ratios):
                m = [x for x in rows if x["policy"] == pol and abs(float(x["ratio"]) - r) < 1e-9]
                acc = sum(int(x["correct"]) for x in m) / len(m) if m else float("nan")
                kept = [float(x["needle_kept"]) for x in m if "needle_kept" in x]
                k = f" ({100 * sum(kept) / len(kept):.0f}%)" if kept and pol != "full" else ""
                cells.append(f"{100 * acc:.0f}%{k}")
                if pol == "full":
                    break
            out.append(f"| {pol} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"{task} by context (accuracy over depths, x8 = ratio 0.875)\n")
        out.append("| policy, ratio | " + " | ".join(str(c) for c in contexts) + " |")
        out.append("|---|" + "---:|" * len(contexts))
        for pol in pols:
            for r in ([0.0] if pol == "full" else ratios):
                cells = []
                for c in contexts:
                    m = [x for x in rows if x["policy"] == pol and int(x["context"]) == c
                         and abs(float(x["ratio"]) - r) < 1e-9]
                    cells.append(f"{100 * sum(int(x['correct']) for x in m) / len(m):.0f}%"
                                 if m else "")
                label = pol if pol == "full" else f"{pol} x{round(1 / (1 - r))}"
                out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = argv[1]
    made = []
    if os.path.exists(os.path.join(d, "ppl.csv")):
        plot_ppl(read(os.path.join(d, "ppl.csv")), d)
        made += ["ppl.png", "ppl_gap.png"]
    for task in ("passkey", "needle"):
        p = os.path.join(d, f"{task}.csv")
        if os.path.exists(p):
            plot_retrieval(read(p), task, d)
            made.append(f"{task}.png")
    if os.path.exists(os.path.join(d, "recall.csv")):
        plot_recall(read(os.path.join(d, "recall.csv")), d)
        made.append("recall.png")
    t = tables(d)
    if t:
        with open(os.path.join(d, "tables.md"), "w") as f:
            f.write(t + "\n")
        made.append("tables.md")
    if not made:
        print(f"plot_quality.py: no ppl.csv, passkey.csv, needle.csv or recall.csv in {d}",
              file=sys.stderr)
        return 1
    print("wrote " + ", ".join(os.path.join(d, m) for m in made))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
