"""`quantperf report` and `quantperf merge`: stored runs as an HTML and/or markdown report."""

from __future__ import annotations


def _cmd_report(args) -> int:
    from ..report.html import load, write

    data = load(args.runs, args.baselines)
    html_path = args.html or (None if args.markdown else "quantperf-report.html")
    for path in write(data, html_path, args.markdown, args.title):
        print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    for name, helptext in (("report", "render stored runs as one self-contained HTML file (plots embedded) and/or "
                                      "markdown: results.jsonl, summary.json, upgrade-check/compare JSON"),
                           ("merge", "the cross-hardware report: runs of several profiles (each runner's results and "
                                     "summary) in one configuration x profile and claim x profile matrix")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("runs", nargs="+", help="results.jsonl, summary.json or upgrade-check / compare JSON files")
        p.add_argument("--html", metavar="FILE", help="the HTML report (default: quantperf-report.html)")
        p.add_argument("--markdown", metavar="FILE", help="the markdown report")
        p.add_argument("--baselines", default=None if name == "report" else "baselines",
                       help="also show each profile's recorded takeaway verdicts from this directory")
        p.add_argument("--title",
                       default="quantperf report" if name == "report" else "quantperf: measured across hardware")
        p.set_defaults(fn=_cmd_report)
