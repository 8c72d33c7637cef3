"""The report's plots (matplotlib, optional): each takes the rows the HTML report tables show and
returns (title, PNG data URI) pairs; without matplotlib every plot is skipped and the tables stay."""

from __future__ import annotations

import base64
import io


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout(w_pad=3)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # keeps legends placed outside the axes
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _groups(rows: list[dict], key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def plot_speed(rows: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None or not rows:
        return []
    out = []
    for (profile, model), group in _groups(rows, lambda r: (r["profile"], r["model"])).items():
        modes = sorted({r["mode"] for r in group})
        backends = sorted({r["backend"] for r in group})
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(backends) + 2), 4))
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            xs, ys, lo, hi = [], [], [], []
            for j, b in enumerate(backends):
                r = next((r for r in group if r["backend"] == b and r["mode"] == mode), None)
                if r:
                    xs.append(j + i * width)
                    ys.append(r["median"])
                    lo.append(r["median"] - r["q1"])
                    hi.append(r["q3"] - r["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=mode)
        ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(backends))])
        ax.set_xticklabels(backends, rotation=30, ha="right")
        ax.set_ylabel("decode tokens/s (median; bars: IQR or range of runs)")
        ax.set_title(f"Decode speed, {model} on {profile}")
        ax.legend(title="mode")
        out.append((f"Decode speed, {model} on {profile}", _png(fig)))
    return out


def plot_kernel(rows: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None or not rows:
        return []
    out = []
    for (profile, model), group in _groups(rows, lambda r: (r["profile"], r["model"])).items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3, 0.45 * len(group) + 1.5)))
        names = [r["backend"] + (" (eager-timed)" if "eager-timed" in r["methods"] else "") for r in group]
        y = list(range(len(group)))
        ax1.barh([v - 0.2 for v in y], [r["decode_us"] for r in group], 0.4, label="decode (1 token)")
        ax1.barh([v + 0.2 for v in y], [r["prefill_us"] for r in group], 0.4, label="prefill (prompt)")
        ax1.set_yticks(y)
        ax1.set_yticklabels(names)
        ax1.set_xlabel("µs per decoder layer (its linear modules)")
        ax1.set_title(f"Kernel time per layer\n{model} on {profile}")
        ax1.legend(loc="lower right")
        types = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        colors = plt.get_cmap("tab20").colors  # more backends than tab10's 10 colours: no two lines alike
        for i, r in enumerate(group):
            # a gap where not timed
            vals = [r["pct_copy"][t] * 100 if r["pct_copy"].get(t) is not None else float("nan") for t in types]
            ax2.plot(types, vals, marker="o", color=colors[i % len(colors)], label=names[i])
        ax2.set_ylabel("% of measured copy bandwidth")
        ax2.set_ylim(0, 110)
        ax2.set_title("Achieved bandwidth per module type\ndecode (1 token)")
        ax2.tick_params(axis="x", rotation=30)
        ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        out.append((f"Kernel time, {model} on {profile}", _png(fig)))
    return out


def plot_memory(rows: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None or not rows:
        return []
    out = []
    for (profile, model), group in _groups(rows, lambda r: (r["profile"], r["model"])).items():
        group = [r for r in group if r["mode"] != "kernel"] or group
        labels = [f"{r['backend']}" + ("" if r["mode"] == "eager" else f" ({r['mode']})") for r in group]
        x = list(range(len(group)))
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(group) + 2), 4))
        series = [("weights", "weight_mib"), (group[0]["peak_kind"], "peak_mib"), ("NVML process", "nvml_mib")]
        series = [(n, k) for n, k in series if any(r[k] for r in group)]
        width = 0.8 / max(len(series), 1)
        for i, (name, k) in enumerate(series):
            ax.bar([v + i * width for v in x], [r[k] or 0 for r in group], width, label=name)
        ax.set_xticks([v + width * (len(series) - 1) / 2 for v in x])
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_ylabel("MiB")
        ax.set_title(f"Memory, {model} on {profile}")
        ax.legend()
        out.append((f"Memory, {model} on {profile}", _png(fig)))
    return out


def plot_tradeoff(speed: list[dict], memory: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None:
        return []
    out = []
    mem = {(r["profile"], r["model"], r["backend"]): r["weight_mib"] for r in memory}
    for (profile, model), group in _groups([r for r in speed if r["mode"] == "eager"],
                                           lambda r: (r["profile"], r["model"])).items():
        pts = [(mem.get((profile, model, r["backend"])), r["median"], r["backend"]) for r in group]
        pts = [p for p in pts if p[0]]
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        markers = "os^vD<>pPX*h"
        for i, (w, s, b) in enumerate(pts):
            ax.scatter([w], [s], marker=markers[i % len(markers)], s=60, label=b)
        ax.set_xlabel("weight footprint (MiB)")
        ax.set_ylabel("decode tokens/s (eager, median)")
        ax.set_title(f"Speed against memory, {model} on {profile}")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        ax.grid(alpha=0.3)
        out.append((f"Speed against memory, {model} on {profile}", _png(fig)))
    return out


def plot_quality(rows: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None or not rows:
        return []
    out = []
    for profile, group in _groups(rows, lambda r: r["profile"]).items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        markers = "os^vD<>pPX*h"
        group = [r for r in group if r["backend"] != r["reference"] and r["bits"]]  # the reference is 0 by definition
        for i, r in enumerate(group):
            x = r["bits"] + (i - (len(group) - 1) / 2) * 0.25  # spread backends of one width apart
            ax1.scatter([x], [max(r["mean_kld"], 1e-9)], marker=markers[i % len(markers)], s=55, label=r["backend"])
            if r["top1"] is not None:
                ax2.scatter([x], [r["top1"]], marker=markers[i % len(markers)], s=55, label=r["backend"])
        ax1.set_yscale("log")
        ax1.set_xlabel("bits per weight")
        ax1.set_ylabel("mean KL divergence to the reference (nats, log)")
        ax1.set_title(f"Quality against bits on {profile}")
        ax2.set_xlabel("bits per weight")
        ax2.set_ylabel("top-1 agreement with the reference")
        ax2.set_title("Top-1 agreement")
        ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        out.append((f"Quality against bits on {profile}", _png(fig)))
    return out


def plot_upgrade(upgrades: list[dict]) -> list[tuple[str, str]]:
    plt = _plt()
    if plt is None:
        return []
    out = []
    for u in upgrades:
        rows = [r for r in u.get("rows", []) if r.get("ratio") is not None]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.5 * len(rows) + 1.5)))
        y = list(range(len(rows)))
        ratios = [r["ratio"] for r in rows]
        lo = [r["ratio"] - (r.get("ci") or [r["ratio"]] * 2)[0] for r in rows]
        hi = [(r.get("ci") or [r["ratio"]] * 2)[1] - r["ratio"] for r in rows]
        ax.errorbar(ratios, y, xerr=[lo, hi], fmt="o", capsize=4)
        labelled = False
        for i, r in enumerate(rows):  # each configuration's own tolerance (modes differ: kernel 1%, eager 5%)
            tol = r.get("tolerance")
            if tol:
                ax.fill_betweenx([i - 0.3, i + 0.3], 1 - tol, 1 + tol, color="#c8e6c9", alpha=0.8,
                                 label=None if labelled else "tolerance of each configuration")
                labelled = True
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r['config']} {r['metric']}" for r in rows], fontsize=8)
        ax.set_xlabel("new / old (ratio with its interval)")
        ax.set_title(f"Upgrade check: {u.get('versions') or 'new against old'}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never over a point
        out.append(("Upgrade check", _png(fig)))
    return out
