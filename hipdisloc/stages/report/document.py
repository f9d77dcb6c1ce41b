"""A report as sections of text, tables, figures and preformatted blocks, rendered to one
self-contained HTML file (figures embedded) and to Markdown (figures linked)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hipdisloc.stats import to_markdown


@dataclass
class Block:
    kind: str  # text | table | figure | pre | banner
    content: object
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self) -> None:
        self.anchor = self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def text(self, value: str) -> Section:
        self.blocks.append(Block("text", value))
        return self

    def table(self, value: pd.DataFrame, caption: str = "") -> Section:
        self.blocks.append(Block("table", value, caption))
        return self

    def figure(self, path: Path, caption: str = "") -> Section:
        self.blocks.append(Block("figure", Path(path), caption))
        return self

    def pre(self, value: str, caption: str = "") -> Section:
        self.blocks.append(Block("pre", value, caption))
        return self


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:0 auto;
padding:0 24px 48px;color:#1d2329;line-height:1.45}
h1{margin-top:28px;font-size:26px}h2{margin-top:36px;border-bottom:2px solid #dfe3e8;
padding-bottom:4px;font-size:20px}
.banner{background:#fff3cd;border:2px solid #d39e00;color:#5c4400;padding:12px 16px;
border-radius:6px;font-weight:600;margin:16px 0}
table{border-collapse:collapse;margin:10px 0 4px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f3f5f7}td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-size:13px;color:#57606a;padding-bottom:4px}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:13px;color:#57606a}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;max-height:420px}
nav ol{columns:2;font-size:14px}
"""


def _inline(text: str) -> str:
    """Escape, then the two pieces of Markdown the report's text uses: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_block(block: Block) -> str:
    if block.kind == "banner":
        return f'<div class="banner">{_inline(str(block.content))}</div>'
    if block.kind == "text":
        return "".join(f"<p>{_inline(p)}</p>" for p in str(block.content).split("\n\n"))
    if block.kind == "pre":
        caption = f"<p>{_inline(block.caption)}</p>" if block.caption else ""
        return f"{caption}<pre>{html.escape(str(block.content))}</pre>"
    if block.kind == "table":
        table = block.content.to_html(index=False, border=0, na_rep="n/a", escape=True)
        if block.caption:  # right after the opening tag, whatever attributes pandas gave it
            table = re.sub(r"(<table[^>]*>)", lambda m: f"{m.group(1)}<caption>"
                           f"{_inline(block.caption)}</caption>", table, count=1)
        return table
    if block.kind == "figure":
        data = base64.b64encode(Path(block.content).read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline(block.caption)}'
                "</figcaption></figure>")
    raise ValueError(f"unknown block kind {block.kind!r}")


def render_html(title: str, sections: list[Section], banner: str | None = None) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>'
                   + "".join(_html_block(b) for b in s.blocks) + "</section>" for s in sections)
    top = _html_block(Block("banner", banner)) if banner else ""
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{top}<nav><ol>{nav}</ol></nav>{body}</body></html>")


def _md_block(block: Block, folder: Path) -> str:
    if block.kind == "banner":
        return f"> **{block.content}**"
    if block.kind == "text":
        return str(block.content)
    if block.kind == "pre":
        return (f"{block.caption}\n\n" if block.caption else "") + f"```\n{block.content}\n```"
    if block.kind == "table":
        return (f"{block.caption}\n\n" if block.caption else "") + to_markdown(block.content)
    if block.kind == "figure":
        rel = Path(block.content).resolve().relative_to(folder.resolve())
        return f"![{block.caption}]({rel.as_posix()})\n\n*{block.caption}*"
    raise ValueError(f"unknown block kind {block.kind!r}")


def render_markdown(title: str, sections: list[Section], folder: Path,
                    banner: str | None = None) -> str:
    parts = [f"# {title}"]
    if banner:
        parts.append(_md_block(Block("banner", banner), folder))
    for s in sections:
        parts.append(f"## {s.title}")
        parts.extend(_md_block(b, folder) for b in s.blocks)
    return "\n\n".join(parts) + "\n"
