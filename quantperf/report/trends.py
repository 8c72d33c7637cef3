"""Trend charts of the results history: one inline SVG per configuration and metric (no script,
no style sheet, nothing fetched), a line per host, each sitting a point whose tooltip (`<title>`)
gives its date, run, git revision and the library versions, change points marked with the
environment diff in their tooltip, and beside each chart the list of its change points with
their diffs and the gate's word for each.

Eager and graph histories are searched per host (hosts of one GPU model differ by more than the
changes to be found); kernel mode's are pooled over hosts, as the gate pools them."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from ..gate.history import change_status
from ..gate.runlevel import HOST_POOLED_MODES
from ..gate.tolerances import DEFAULT_TOLERANCES, resolve_tolerance
from ..history.changepoints import Located, locate, series

WIDTH, HEIGHT, PAD = 640, 200, 44
HOST_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
SHOWN_PACKAGES = ("torch", "transformers", "bitsandbytes", "onnxruntime", "onnxruntime-gpu", "torchao")


@dataclass
class Chart:
    profile: str
    config: str
    metric: str
    unit: str
    higher_is_better: bool
    sittings: list  # the sittings that measured it, oldest first (the x axis)
    tolerance: float = 0.0  # a change point within it is named ok
    points: list = field(default_factory=list)  # Located change points


def charts(sittings: list, tolerances: dict | None = None, **kwargs) -> list[Chart]:
    """One chart per profile, configuration and metric in `sittings`, with its change points
    (`kwargs` go to the E-divisive search: p_value, permutations, min_size, seed). A change point
    is worded by the gate with the metric's tolerance (`tolerances` over the defaults)."""
    out = []
    for profile in sorted({s.profile for s in sittings}):
        mine = sorted((s for s in sittings if s.profile == profile), key=lambda s: (s.when, s.run_id))
        keys = sorted({(c, m) for s in mine for c, cfg in s.configs.items() for m in (cfg.get("metrics") or {})})
        for config, metric in keys:
            last = next(s.configs[config] for s in reversed(mine) if metric in (s.configs.get(config) or {}).get(
                "metrics", {}))
            m = last["metrics"][metric]
            measured = [s for s in mine if metric in ((s.configs.get(config) or {}).get("metrics") or {})]
            tol = resolve_tolerance([DEFAULT_TOLERANCES, tolerances or {}], m.get("kind", "speed"),
                                    last.get("mode") or "eager")
            chart = Chart(profile, config, metric, m.get("unit", ""), m.get("higher_is_better", True), measured, tol)
            hosts = [None] if last.get("mode") in HOST_POOLED_MODES else sorted({s.host for s in mine})
            for host in hosts:
                chart.points += locate(mine, config, metric, host, **kwargs)
            chart.points.sort(key=lambda p: (p.sitting.when, p.host or ""))
            out.append(chart)
    return out


def _tooltip(s, value: float, unit: str) -> str:
    pk = s.packages
    versions = ", ".join(f"{k} {pk[k]}" for k in SHOWN_PACKAGES if pk.get(k))
    return (f"{s.started_at} host {s.host} run {s.run_id}" + (f" git {s.git_revision}" if s.git_revision else "")
            + f"\n{value:.4g} {unit}" + (f"\n{versions}" if versions else ""))


def _describe(p: Located, higher_is_better: bool, tolerance: float) -> str:
    word = change_status(p.point.before, p.point.after, higher_is_better, tolerance)
    where = f" on host {p.host}" if p.host else ""
    diff = "; ".join(p.diff.lines())
    if not p.diff.environment_changed and p.nearby:
        near = [f"{abs(off)} sitting(s) {'earlier' if off < 0 else 'later'}: {'; '.join(d.lines())}"
                for off, d in p.nearby]
        diff = (diff + "; " if diff else "") + f"no environment change at this sitting (nearby, {' | '.join(near)})"
    diff = diff or "no environment change recorded between these sittings"
    ratio = f"x{p.point.ratio:.3f}, " if p.point.ratio == p.point.ratio else ""
    return (f"{p.sitting.started_at[:16]}{where}: {p.point.before:.4g} -> {p.point.after:.4g} "
            f"({ratio}{word}, p={p.point.p_value:.3f}); {diff}")


def render_svg(chart: Chart) -> str:
    order = {id(s): i for i, s in enumerate(chart.sittings)}
    n = max(len(chart.sittings) - 1, 1)
    hosts = sorted({s.host for s in chart.sittings})
    lines = {h: series([s for s in chart.sittings if s.host == h], chart.config, chart.metric) for h in hosts}
    values = [v for _, vs in lines.values() for v in vs]
    lo, hi = min(values), max(values)
    span = (hi - lo) or abs(hi) * 0.05 or 1.0
    lo, hi = lo - 0.1 * span, hi + 0.1 * span

    def x(s):
        return PAD + (WIDTH - 2 * PAD) * order[id(s)] / n

    def y(v):
        return HEIGHT - PAD / 2 - (HEIGHT - PAD) * (v - lo) / (hi - lo)

    better = "higher" if chart.higher_is_better else "lower"
    title = f"{chart.config} {chart.metric} ({chart.unit or 'ratio'}, {better} is better)"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
             f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff" stroke="#ddd"/>',
             f'<text x="4" y="{PAD / 2 - 6:.0f}" font-size="10" fill="#444">{hi:.4g}</text>',
             f'<text x="4" y="{HEIGHT - 4}" font-size="10" fill="#444">{lo:.4g}</text>']
    for p in chart.points:
        px = x(p.sitting)
        tip = html.escape(_describe(p, chart.higher_is_better, chart.tolerance))
        parts.append(f'<g class="change-point"><line x1="{px:.1f}" x2="{px:.1f}" y1="4" y2="{HEIGHT - 4}" '
                     f'stroke="#d62728" stroke-dasharray="4 3"><title>{tip}</title></line></g>')
    for i, h in enumerate(hosts):
        used, vs = lines[h]
        if not used:
            continue
        colour = HOST_COLOURS[i % len(HOST_COLOURS)]
        parts.append(f'<text x="{WIDTH - PAD - 90 * (len(hosts) - i - 1)}" y="12" font-size="10" fill="{colour}" '
                     f'text-anchor="end">host {html.escape(h)}</text>')
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(used, vs))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
        for s, v in zip(used, vs):
            parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                         f"<title>{html.escape(_tooltip(s, v, chart.unit))}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def render_chart(chart: Chart) -> str:
    """The chart's SVG with the list of its change points beside it."""
    items = "".join(f"<li>{html.escape(_describe(p, chart.higher_is_better, chart.tolerance))}</li>"
                    for p in chart.points)
    listing = f"<ul>{items}</ul>" if items else '<p class="note">no change point</p>'
    return (f'<div class="trend" style="display:flex;gap:1em;align-items:flex-start;margin:0.6em 0">'
            f"{render_svg(chart)}<div><b>{html.escape(chart.config)}</b> {html.escape(chart.metric)}"
            f"{listing}</div></div>")


def trends_section(sittings: list, skipped: list[str] | None = None, **kwargs) -> str:
    """The HTML of the trend section over `sittings` (history.store.Sitting), one chart per
    profile, configuration and metric; `skipped` lists store files that could not be read."""
    parts = ['<section id="trends"><h2>Trends</h2>',
             '<p class="note">Each point is one sitting (hover for its date, run and versions); dashed lines are '
             "change points (E-divisive means with a permutation test), with what changed in the environment.</p>"]
    for line in skipped or []:
        parts.append(f'<p class="note">skipped: {html.escape(line)}</p>')
    found = charts(sittings, **kwargs)
    if not found:
        parts.append('<p class="note">no sittings in the history</p>')
    profile = None
    for chart in found:
        if chart.profile != profile:
            profile = chart.profile
            parts.append(f"<h3>{html.escape(profile)}</h3>")
        parts.append(render_chart(chart))
    parts.append("</section>")
    return "\n".join(parts)


def trends_page(sittings: list, skipped: list[str] | None = None, title: str = "quantperf history", **kwargs) -> str:
    """A self-contained HTML page of the trend section."""
    from .html import CSS

    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n"
            f"{trends_section(sittings, skipped, **kwargs)}\n</body></html>\n")
