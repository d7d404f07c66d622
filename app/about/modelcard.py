"""The model card and manifest in `checkpoints/` (written by `qatie report`), read once at startup.

The card's Markdown is the source of truth for its numbers; the app shows its tables as they are
(grouped under their headings) rather than re-deriving anything. When the files are absent the
tabs say so and how to make them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from app import config

CARD_MD = "MODEL_CARD.md"
CARD_JSON = "MODEL_CARD.json"
MANIFEST = "manifest.json"

ABSENT_NOTE = (
    "*The model card is not in this copy of the app (`checkpoints/MODEL_CARD.md`). It is made by "
    "`qatie report --out checkpoints/MODEL_CARD.md`, which evaluates input / FP32 / PTQ-INT8 / QAT-INT8 "
    "on the test photos and benchmarks them.*"
)


@dataclass
class ModelCard:
    markdown: str | None = None
    tables: list[tuple[str, str]] = field(default_factory=list)  # (heading, table markdown)
    data: dict | None = None  # MODEL_CARD.json
    manifest: dict | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return bool(self.tables)

    def tables_md(self, keywords: tuple[str, ...] | None = None) -> str:
        """The card's tables (those whose heading or header row mentions a keyword, if given)."""
        if not self.tables:
            return ABSENT_NOTE
        chosen = [(h, t) for h, t in self.tables
                  if keywords is None or any(k in (h + t.split("\n", 1)[0]).lower() for k in keywords)]
        if not chosen:
            chosen = self.tables
        out = []
        for heading, tab in chosen:
            title = public_text(heading)
            out.append(f"#### {title[:1].upper() + title[1:]}\n\n{public_text(tab)}" if heading else public_text(tab))
        return "\n\n".join(out) + "\n\n*From `checkpoints/MODEL_CARD.md` (made by `qatie report`).*"

    def files_md(self) -> str:
        """Shipped files from the manifest: name, size, sha256 prefix."""
        files = _manifest_files(self.manifest)
        if not files:
            return ""
        lines = ["| File | Size (MB) | sha256 |", "|---|---:|---|"]
        for name, info in files:
            size = info.get("size") or info.get("size_bytes") or info.get("bytes")
            sha = str(info.get("sha256", ""))[:12]
            lines.append(f"| `{name}` | {size / 1e6:.2f} | `{sha}…` |" if isinstance(size, (int, float))
                         else f"| `{name}` | — | `{sha}…` |")
        return "\n".join(lines)


def _manifest_files(manifest) -> list[tuple[str, dict]]:
    if not isinstance(manifest, dict):
        return []
    files = manifest.get("files", manifest)
    if isinstance(files, dict):
        return [(k, v) for k, v in files.items() if isinstance(v, dict)]
    if isinstance(files, list):
        return [(str(v.get("file") or v.get("name") or v.get("path")), v) for v in files if isinstance(v, dict)]
    return []


def public_text(text: str) -> str:
    """Card text for the app's visitors: no repository-internal paths (`../shared/...`, the split
    file) and no `key:` prefixes on headings."""
    text = re.sub(r"`?\.\./shared/data/clean\S*?`?(?=[\s),]|$)", "the project's clean photo collection", text)
    text = re.sub(r"`?\.\./shared/\S*?`?(?=[\s),]|$)", "the project's data", text)
    text = re.sub(r"\s*\(qatie/(?:data/)?clean_split\.json\)", "", text)
    return re.sub(r"^[a-z0-9_]+: (?=\S)", "", text)


def _first_sentence(paragraph: str) -> str:
    s = re.sub(r"[*_`]", "", paragraph.strip())
    s = re.split(r"(?<=[.:])\s", s, maxsplit=1)[0].rstrip(".:")
    return s if len(s) <= 90 else s[:87].rsplit(" ", 1)[0] + "…"


def extract_tables(markdown: str) -> list[tuple[str, str]]:
    """Every pipe table in a Markdown text with the nearest heading above it; a second table under
    the same heading is titled by the first sentence of the paragraph before it (each table has
    a heading of its own)."""
    tables, heading, block, paragraph, used = [], "", [], "", set()
    for line in markdown.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            block.append(line.rstrip())
            continue
        if block:
            if len(block) >= 2 and re.match(r"^\s*\|?\s*:?-{2,}", block[1]):
                title = heading
                if heading in used and paragraph:
                    title = _first_sentence(paragraph)
                used.add(heading)
                tables.append((title, "\n".join(block)))
            block = []
        m = re.match(r"^\s*#{1,6}\s+(.*)", line)
        if m:
            heading, paragraph = m.group(1).strip(), ""
        elif line.strip():
            paragraph = line.strip()
    return tables


def load(folder: Path | None = None) -> ModelCard:
    folder = Path(folder or config.CHECKPOINTS)
    card = ModelCard()
    md = folder / CARD_MD
    if md.is_file():
        try:
            card.markdown = md.read_text(encoding="utf-8")
            card.tables = extract_tables(card.markdown)
        except (OSError, UnicodeDecodeError) as exc:
            card.errors.append(f"{md.name}: {exc}")
    for name, attr in ((CARD_JSON, "data"), (MANIFEST, "manifest")):
        path = folder / name
        if path.is_file():
            try:
                setattr(card, attr, json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                card.errors.append(f"{name}: {exc}")
    return card
