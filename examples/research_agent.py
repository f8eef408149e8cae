"""A research agent over a local folder of documents.

With no folder given, it reads the documentation every Python installation carries: the long
description (the project's README) of each installed package, taken from its metadata and
written once as one Markdown file per package into ``<agentrt data dir>/examples/docs/``. Any
folder of ``.md``/``.txt``/``.rst`` files works with ``--folder``.

Run (one command; the local model starts and stops by itself)::

    python examples/research_agent.py
    python examples/research_agent.py "What is httpx2 for, and what does networkx do?"
    python examples/research_agent.py --folder ~/notes "Which notes mention the budget?"

The planner reads the documents it needs in parallel, then the joiner writes the answer. The
tools are read-only and confined to the folder.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

from agentrt import Agent, PlanExample, tool
from agentrt.config import get_settings
from agentrt.tools import Limits

DEFAULT_QUESTION = "According to their documentation, what is each of the packages rich and typer for?"
_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = {".md", ".txt", ".rst"}


def build_package_docs(folder: Path) -> Path:
    """One Markdown file per installed distribution, from its metadata's description."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if not name or not body.strip():
            continue
        path = folder / f"{re.sub(r'[-_.]+', '-', name.lower())}.md"
        if not path.exists():
            summary = dist.metadata.get("Summary") or ""
            path.write_text(f"# {name}\n\n{summary}\n\n{body}", encoding="utf-8")
    return folder


class Library:
    """The documents of a folder, split into paragraphs, with a small BM25 index over them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.docs = {p.stem: p for p in sorted(self.folder.rglob("*")) if p.suffix in _SUFFIXES and p.is_file()}
        if not self.docs:
            raise SystemExit(f"no .md, .txt or .rst documents in {self.folder}")
        self.paragraphs: list[tuple[str, str]] = []
        for name, path in self.docs.items():
            text = path.read_text(encoding="utf-8", errors="replace")
            for para in re.split(r"\n\s*\n", text):
                if len(para.strip()) > 40:
                    self.paragraphs.append((name, plain(para)[:600]))
        self.tf = [Counter(_WORD.findall(p.lower())) for _, p in self.paragraphs]
        df = Counter(w for tf in self.tf for w in tf)
        n = len(self.tf)
        self.idf = {w: math.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}
        self.avg = sum(sum(tf.values()) for tf in self.tf) / max(n, 1)

    def find(self, name: str) -> Path:
        key = re.sub(r"[-_.\s]+", "-", name.strip().strip("'\"").lower())
        if key in self.docs:
            return self.docs[key]
        close = [d for d in self.docs if key in d or d in key]
        if len(close) == 1:
            return self.docs[close[0]]
        raise ValueError(f"no document {name!r}" + (f"; did you mean {', '.join(close[:5])}?" if close else ""))

    def search(self, query: str, k: int) -> list[dict]:
        words = _WORD.findall(query.lower())
        scores = []
        for i, tf in enumerate(self.tf):
            length = sum(tf.values())
            s = sum(self.idf.get(w, 0) * tf[w] * 2.2 / (tf[w] + 1.2 * (0.25 + 0.75 * length / self.avg))
                    for w in words if w in tf)
            if s > 0:
                scores.append((s, i))
        scores.sort(reverse=True)
        return [{"doc": self.paragraphs[i][0], "text": self.paragraphs[i][1]} for _, i in scores[:k]]


def plain(text: str) -> str:
    """Markdown/HTML to plain prose: badges, images and tags dropped, links kept as their text."""
    text = re.sub(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)", "", text)  # linked badges
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # images
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links -> their text
    text = re.sub(r"<[^>]+>", " ", text)  # html tags
    text = re.sub(r"^#+\s*|[*_`]{1,3}", "", text, flags=re.M)
    return " ".join(text.split())


def make_tools(library: Library) -> list:
    opts = dict(read_only=True, idempotent=True, limits=Limits(timeout=20))

    @tool(**opts)
    def doc_summary(name: str) -> str:
        """The opening of a document (its title and first sentences), about 300 characters.

        Args:
            name: the document's name, e.g. a package name like "rich".
        """
        # short, and prose only: the joiner's answer holds 300 characters, and the local model
        # copies a long or link-laden opening whole instead of answering for every document
        text = library.find(name).read_text(encoding="utf-8", errors="replace")
        paras = [plain(p) for p in re.split(r"\n\s*\n", text)]
        prose = [p for p in paras if len(p) >= 30 and "•" not in p and "readme" not in p.lower()]
        return " ".join(list(dict.fromkeys(prose))[:2])[:300] or plain(text)[:300]

    @tool(**opts)
    def search_docs(query: str) -> list[dict]:
        """Find the three paragraphs that best match a query, across all documents.

        Args:
            query: words to look for.
        """
        return library.search(query, 3)

    @tool(**opts)
    def read_doc(name: str, start: int = 0) -> str:
        """Read 2000 characters of a document from a character offset.

        Args:
            name: the document's name.
            start: offset in characters.
        """
        return library.find(name).read_text(encoding="utf-8", errors="replace")[start:start + 2000]

    return [doc_summary, search_docs, read_doc]


EXAMPLES = [PlanExample(
    question="What do the documents of pydantic and httpx say each project does?",
    plan='1. doc_summary(name="pydantic")\n2. doc_summary(name="httpx")\n3. join()',
)]


def ask(question: str = DEFAULT_QUESTION, folder: Path | None = None):
    """Answer ``question`` over ``folder`` (default: the package docs); returns the `RunResult`."""
    folder = folder or build_package_docs(get_settings().data_dir / "examples" / "docs")
    return Agent(tools=make_tools(Library(folder)), examples=EXAMPLES).run_sync(question)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import console, print_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    ap.add_argument("--folder", type=Path, help="folder of .md/.txt/.rst documents (default: package docs)")
    args = ap.parse_args(argv)
    folder = args.folder or build_package_docs(get_settings().data_dir / "examples" / "docs")
    console.print(f"[dim]{len(Library(folder).docs)} documents in {folder}[/]")
    console.print(f"[bold]question:[/] {args.question}")
    with console.status("planning and running..."):
        result = ask(args.question, folder)
    print_run(result)
    return 3 if result.partial else 0


if __name__ == "__main__":
    raise SystemExit(main())
