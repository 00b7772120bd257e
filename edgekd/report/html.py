"""Markdown to a self-contained HTML page, for the subset of Markdown the reports use (headings, paragraphs,
bullets, tables, code fences, **bold**, `code`), and tables without their empty columns."""

from __future__ import annotations

import html
import re

# what a table prints for "nothing here"
EMPTY_CELLS = frozenset({"", "-", "—", "None", "n/a"})


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def drop_empty_columns(md: str) -> str:
    """Every table of `md` without the columns whose body cells are all empty (EMPTY_CELLS): a column
    a reader scans for nothing. A table without body rows is left as it is."""
    lines, out, fenced = md.split("\n"), [], False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("|"):
            out.append(line)
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        rows = [_cells(t) for t in lines[i:j]]
        body = rows[2:]
        keep = [k for k in range(len(rows[0])) if any(k < len(r) and r[k] not in EMPTY_CELLS for r in body)]
        if body and len(keep) < len(rows[0]):
            out += ["| " + " | ".join(r[k] if k < len(r) else "" for k in keep) + " |" for r in rows]
        else:
            out += lines[i:j]
        i = j
    return "\n".join(out)


def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", s)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
          ".r{text-align:right}th{background:#f4f4f4}"
          "p.verdict{font-size:1.1em;margin:0.4em 0}p.check{background:#fff4d6;border-left:4px solid #e0a000;padding:4px 8px}"
          "figure{margin:1em 0}figure img{max-width:100%}code{background:#f4f4f4;padding:0 3px}")

# a verdict line (a paragraph between the title and the first bullet, table or section) opens with the
# model's name in bold, after this mark when something needs checking
_FLAG = "⚠"


def markdown_to_html(md: str, figs: dict[str, str], *, title: str) -> str:
    """A self-contained page: the title, the verdict, the first table, then the figures (data: URLs, in
    the order given), then the rest."""
    body: list[str] = []
    rows: list[list[str]] = []
    right: list[bool] = []
    items: list[str] = []
    first_table: int | None = None
    verdict = True  # until the first bullet, table or heading after the title

    def flush():
        nonlocal first_table
        if items:
            body.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
            items.clear()
        if rows:
            head, *rest = rows
            cls = lambda k: " class='r'" if k < len(right) and right[k] else ""  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th{cls(k)}>{_inline(c)}</th>" for k, c in enumerate(head)) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td{cls(k)}>{_inline(c)}</td>" for k, c in enumerate(row)) + "</tr>"
                                  for row in rest) + "</table>")
            rows.clear()
            if first_table is None:
                first_table = len(body)

    pre: list[str] | None = None
    for line in md.splitlines():
        if line.startswith("```"):
            if pre is None:
                flush()
                pre = []
            else:
                body.append("<pre>" + html.escape("\n".join(pre)) + "</pre>")
                pre = None
            continue
        if pre is not None:
            pre.append(line)
            continue
        if line.startswith("|"):
            if items:
                flush()
            cells = _cells(line)
            if all(c and set(c) <= set("-:") for c in cells):  # the separator row: "---:" is a right-aligned column
                right = [c.endswith(":") for c in cells]
            else:
                rows.append(cells)
            continue
        if line.startswith("- "):
            if rows:
                flush()
            items.append(_inline(line[2:]))
            verdict = False
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
            verdict = False
        elif line.strip():
            cls = ""
            if verdict and line.startswith((_FLAG, "**")):
                cls = " class='verdict check'" if line.startswith(_FLAG) else " class='verdict'"
            body.append(f"<p{cls}>{_inline(line)}</p>")
    flush()
    figures = ("<section class='figures'>" + "".join(f'<figure><img alt="{html.escape(k)}" src="{v}"></figure>'
                                                     for k, v in figs.items()) + "</section>")
    at = len(body) if first_table is None else first_table
    body.insert(at, figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>" + "".join(body) + "</body></html>")
