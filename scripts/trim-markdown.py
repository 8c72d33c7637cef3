#!/usr/bin/env python3
"""Trim markdown from stdin to at most LIMIT bytes (UTF-8) on stdout, for GitHub's size caps.

    python3 scripts/trim-markdown.py LIMIT [--note TEXT] < report.md > out.md

Input that fits is copied unchanged. Longer input is cut at the last whole line that fits, an
open ``` fence is closed, and a closing note says it was trimmed, how much was kept and TEXT
(e.g. where the full report is). The CI workflows use it for pull-request comments (GitHub's
65,536-character limit: LIMIT 65000) and job summaries (1 MiB per step: LIMIT 1000000).
"""

import argparse
import sys


def trim(text: str, limit: int, note: str = "") -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text

    def tail_note(kept: int) -> str:
        return (f"\n\n---\n**Trimmed**: this summary was cut at {kept:,} of {len(data):,} bytes "
                f"to fit {limit:,}.{(' ' + note) if note else ''}\n")

    fence = "```\n"
    budget = limit - len(tail_note(len(data)).encode("utf-8")) - len(fence)
    if budget <= 0:
        raise ValueError(f"limit {limit} is too small for the trimming note")
    kept, size, in_fence = [], 0, False
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > budget:
            break
        kept.append(line)
        size += n
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
    body = "".join(kept)
    if body and not body.endswith("\n"):
        body += "\n"
    if in_fence:
        body += fence
    return body + tail_note(size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("limit", type=int, help="the most bytes the output may have")
    ap.add_argument("--note", default="", help="added to the trimming note, e.g. where the full report is")
    args = ap.parse_args(argv)
    text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    sys.stdout.buffer.write(trim(text, args.limit, args.note).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
