"""The reports of a build: report.json (assembly), report.md (markdown: the generic sections around the
parts the build's task writes), the figures, and report.html (html: the page, figures embedded), rendered
from report.json alone; and the combined report of several targets."""

from __future__ import annotations

from pathlib import Path

from .assembly import assemble, check_budget, environment
from .figures import Point, combined_plot, frontier_figure, pareto_front, plots, save_frontier
from .html import drop_empty_columns, markdown_to_html
from .markdown import (INT8_DROP_FLAG_PTS, LABELS, SHORT, accuracy_budget_lines, budget_verdict, deliverable_name,
                       exporter_lines, headline, quality, render_combined, render_markdown, task_of, verdict_lines)


def render_html(r: dict) -> str:
    """A self-contained page (figures embedded) with the tables of report.md."""
    own = task_of(r).render_markdown(r) is not None  # a task with its own report has its own figures (none yet)
    return markdown_to_html(render_markdown(r), {} if own else plots(r), title=f"edgekd {r['target']}")


def write_reports(build_dir, r: dict) -> None:
    """report.md and report.html from the report dict (report.json is the source of truth)."""
    d = Path(build_dir)
    (d / "report.md").write_text(render_markdown(r))
    (d / "report.html").write_text(render_html(r))


def write_combined(out_dir, reports: dict[str, dict]) -> Path:
    """<out>/report.{json,md,html} across targets; written aside, then renamed."""
    import json

    from ..artifacts import write_atomic

    d = Path(out_dir)
    md = render_combined(reports)
    for name, text in (("report.json", json.dumps({"targets": reports}, indent=2)), ("report.md", md),
                       ("report.html", markdown_to_html(md, combined_plot(reports), title="edgekd builds"))):
        write_atomic(d / name, text)
    return d / "report.md"


__all__ = ["INT8_DROP_FLAG_PTS", "LABELS", "SHORT", "Point", "accuracy_budget_lines", "assemble", "budget_verdict",
           "check_budget", "combined_plot", "deliverable_name", "drop_empty_columns", "environment", "exporter_lines",
           "frontier_figure", "headline", "markdown_to_html", "pareto_front", "plots", "quality", "render_combined",
           "render_html", "render_markdown", "save_frontier", "task_of", "verdict_lines", "write_combined",
           "write_reports"]
