"""What the notebooks show: pandas tables (Styler), one chart, and widgets that degrade to static output.

Only presentation lives here; every number comes from a summary the logic modules computed.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
from IPython import display as ipython  # looked up when called: a test may stand in for it

from helpers.migrations import get
from helpers.notebook_ui.progress import is_interactive

ACTION_ORDER = ["migrate", "fill_missing", "track_existing", "no_change", "problem"]
#: One colour per planned action in every chart and panel (colour-blind-safe Okabe-Ito hues).
ACTION_COLOURS = {"migrate": "#0072B2", "fill_missing": "#56B4E9", "track_existing": "#009E73", "no_change": "#999999", "problem": "#D55E00"}
#: Actions a later version may add get the remaining hues, by name, so they too keep theirs across panels.
SPARE_COLOURS = ("#E69F00", "#009E73", "#CC79A7", "#F0E442", "#000000")
OUTCOME_ORDER = ["applied", "already_applied", "conflict", "error"]


def action_colour(action: str) -> str:
    """The colour of an action, the same in every panel whichever actions a panel happens to have."""
    if action in ACTION_COLOURS:
        return ACTION_COLOURS[action]
    return SPARE_COLOURS[int(hashlib.sha256(action.encode()).hexdigest(), 16) % len(SPARE_COLOURS)]


def status_action_table(by_status: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Records per legacy status x planned action, with totals."""
    frame = pd.DataFrame.from_dict({status: dict(actions) for status, actions in by_status.items()}, orient="index").fillna(0)
    columns = [a for a in ACTION_ORDER if a in frame.columns] + [c for c in frame.columns if c not in ACTION_ORDER]
    frame = frame.reindex(columns=columns).astype(int).sort_index()
    frame.index.name = "legacy status"
    frame["total"] = frame.sum(axis=1)
    frame.loc["total"] = frame.sum(axis=0)
    return frame


def counts_table(counts: Mapping[str, int], *, key: str, value: str = "count") -> pd.DataFrame:
    frame = pd.DataFrame(sorted(counts.items()), columns=[key, value])
    return frame.set_index(key)


def backup_counts_table(snapshot: Mapping[str, int], live: Mapping[str, int]) -> pd.DataFrame:
    """Snapshot counts beside live counts (when read); a difference is shown, not judged: writers may be running."""
    frame = pd.DataFrame({"in snapshot": pd.Series(dict(snapshot), dtype="int64")})
    if live:
        frame["live now"] = pd.Series(dict(live), dtype="Int64")
        frame["difference"] = frame["live now"] - frame["in snapshot"]
    frame.index.name = "table"
    return frame


def problems_table(problems: Iterable[Any]) -> pd.DataFrame:
    """Problems by reason: how many documents have it, the whole message and every example id (the full list per
    document is problems.csv)."""
    rows = [
        {
            "table": p.table,
            "reason": p.code,
            "severity": p.severity,
            "documents": p.count,
            "message (first seen)": p.message,
            "example ids": ", ".join(p.examples),
        }
        for p in problems
    ]
    columns = ["table", "reason", "severity", "documents", "message (first seen)", "example ids"]
    return pd.DataFrame(rows, columns=columns)


#: Text columns shown whole: wrapped and left aligned, never cut to pandas' 50 characters.
WRAPPED = {"white-space": "pre-wrap", "text-align": "left", "overflow-wrap": "anywhere", "max-width": "40em"}
#: Lists of ids: wrapped between ids, never inside one (an id cut in two cannot be searched for).
ID_LIST = {"white-space": "normal", "text-align": "left", "overflow-wrap": "normal", "word-break": "keep-all", "max-width": "40em"}


def text_styled(frame: pd.DataFrame, wrapped: Sequence[str] = (), ids: Sequence[str] = ()) -> Any:
    """A table as an auditor reads it: no index column, every column left aligned and at the top, the `wrapped`
    text columns whole, the `ids` columns wrapped between ids."""
    styler = frame.style.format(thousands=",", precision=0, na_rep="").hide(axis="index")
    styler = styler.set_properties(**{"text-align": "left", "vertical-align": "top"})
    if present := [c for c in wrapped if c in frame.columns]:
        styler = styler.set_properties(subset=present, **WRAPPED)
    if present := [c for c in ids if c in frame.columns]:
        styler = styler.set_properties(subset=present, **ID_LIST)
    return styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])


def problems_styled(frame: pd.DataFrame) -> Any:
    """The problems table: the message wrapped whole, the example ids wrapped between ids."""
    return text_styled(frame, wrapped=["message (first seen)"], ids=["example ids"])


def outcomes_table(outcomes: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Documents per table x apply outcome."""
    frame = pd.DataFrame.from_dict({t: dict(c) for t, c in outcomes.items()}, orient="index").reindex(columns=OUTCOME_ORDER)
    frame = frame.fillna(0).astype(int)
    frame.index.name = "table"
    return frame


def styled(frame: pd.DataFrame, *, caption: str | None = None, highlight: str | None = None) -> Any:
    """A Styler with thousands separators; `highlight` shades a column whose non-zero cells need attention."""
    styler = frame.style.format(thousands=",", precision=0, na_rep="")
    if caption:
        styler = styler.set_caption(caption)
    if highlight and highlight in frame.columns:
        styler = styler.map(lambda v: "background-color: #fde2e1" if v else "", subset=[highlight])
    return styler


def checks_styled(frame: pd.DataFrame) -> Any:
    """Verify's table, read like the problems table, with a green row per passed check and a red one per failure."""
    def row_style(row: pd.Series) -> list[str]:
        colour = "#e6f4ea" if row["result"] == "pass" else "#fde2e1"
        return [f"background-color: {colour}"] * len(row)

    return text_styled(frame, wrapped=["what it proves", "note"], ids=["example ids"]).apply(row_style, axis=1)


def plan_chart(by_status_per_table: Mapping[str, Mapping[str, Mapping[str, int]]]) -> Any:
    """One stacked bar chart per table: documents per legacy status, coloured by planned action (None if empty)."""

    tables = [t for t, by_status in by_status_per_table.items() if by_status]  # in plan order
    if not tables:
        return None
    figure, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for axis, table in zip(axes[0], tables, strict=False):
        frame = status_action_table(by_status_per_table[table]).drop(index="total").drop(columns="total")
        frame.plot.barh(stacked=True, ax=axis, width=0.8, color=[action_colour(a) for a in frame.columns])
        axis.set_title(f"{table}: records per legacy status and planned action")
        axis.set_xlabel("documents")
    figure.tight_layout()
    return figure


BEFORE_AFTER_COLUMNS = ["document", "action", "problems", "new field", "new value", "from legacy field(s)"]
ALL = "(all)"


def document_label(before: Mapping[str, Any]) -> str:
    """A readable name for a document: its table, the telling end of its id and its planned action."""
    table = str(before.get("_table", ""))
    return f"{table} {short_id(str(before.get('_id', '')), table)} · {before.get('_action', '?')}".strip()


def short_id(doc_id: str, table: str = "") -> str:
    """The part of an id a person can tell apart: local ids are zeros, a number and the table name."""
    core = doc_id.lstrip("0")
    if len(doc_id) - len(core) >= 4:
        return core.removesuffix(table) or doc_id
    return "…" + doc_id[-8:] if len(doc_id) > 10 else doc_id


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _telling(value: Any) -> bool:
    """A value specific enough that finding it inside a new field shows where the field came from."""
    if isinstance(value, str):
        return len(value) > 3
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1)


def legacy_sources(
    field: str, new_value: Any, before: Mapping[str, Any], derived_from: Mapping[str, Mapping[str, Sequence[str]]] | None = None
) -> list[str]:
    """The legacy fields a new field was built from: those the migration declares (`Migration.derived_from`:
    a key/URL pair, a status mapping), and every legacy field whose value appears in the new value (a size
    copied into an object, ...)."""
    named = list((derived_from or {}).get(str(before.get("_table")), {}).get(field, ()))
    leaves = [leaf for leaf in _leaves(new_value) if _telling(leaf)]
    found = [k for k, v in before.items() if not k.startswith("_") and k not in named and _telling(v) and v in leaves]
    return [k for k in named if k in before] + sorted(found)


def _text(value: Any) -> str:

    return value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False, default=str)


def before_after_frame(
    pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    derived_from: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> pd.DataFrame:
    """One row per new field of each example document, beside the legacy field(s) it came from (`name = value`
    lines), one per field the plan removes, and one with the side rows it creates (labelled as the migration names
    them, `_side_label`; all a `track_existing` document gets); a document the plan leaves alone gets one row saying
    why. Values are whole (JSON for objects)."""
    rows = []
    for before, after in pairs:
        problems = ", ".join(str(p.get("code")) for p in before.get("_problems", ()))
        common = {"document": document_label(before), "action": before.get("_action", ""), "problems": problems}
        changed = [f for f in after if not f.startswith("_") and (f not in before or before[f] != after[f])]
        for field in changed:
            sources = legacy_sources(field, after[field], before, derived_from)
            rows.append({
                **common, "new field": field, "new value": _text(after[field]),
                "from legacy field(s)": "\n".join(f"{s} = {_text(before[s])}" for s in sources) or "(derived)",
            })
        removed = [f for f in before if not f.startswith("_") and f not in after]
        carriers = (derived_from or {}).get(str(before.get("_table")), {})
        for field in removed:
            carried = [f"carried by {c} = {_text(after[c])}" for c in carriers.get(field, ()) if c in after]
            rows.append({**common, "new field": f"{field} (removed)", "new value": "(absent)",
                         "from legacy field(s)": "\n".join([f"{field} = {_text(before[field])}", *carried])})
        references = before.get("_references", ())
        if references:
            rows.append({**common, "new field": f"{before.get('_side_label', 'side rows')} (created: {len(references)})",
                         "new value": "\n".join(_text(r) for r in references), "from legacy field(s)": "(the fields above)"})
        if not changed and not removed and not references:
            blocking = [str(p.get("message")) for p in before.get("_problems", ()) if p.get("severity") == "blocking"]
            rows.append({**common, "new field": "(none)", "new value": "; ".join(blocking) or "already migrated: nothing to write",
                         "from legacy field(s)": ""})
    return pd.DataFrame(rows, columns=BEFORE_AFTER_COLUMNS)


def filter_choices(frame: pd.DataFrame, action: str = ALL, problem: str = ALL) -> list[str]:
    """The documents (labels, in order) that have the chosen action and problem code."""
    keep = frame
    if action != ALL:
        keep = keep[keep["action"] == action]
    if problem != ALL:
        keep = keep[keep["problems"].str.split(", ").apply(lambda codes: problem in codes)]
    return list(dict.fromkeys(keep["document"]))


def before_after_styled(frame: pd.DataFrame) -> Any:
    """Whole values, wrapped and left-aligned (a Styler never truncates, unlike the DataFrame repr)."""
    return frame.style.hide(axis="index").set_properties(**{
        "white-space": "pre-wrap", "overflow-wrap": "anywhere", "max-width": "36em",
        "text-align": "left", "vertical-align": "top", "font-family": "monospace",
    }).set_table_styles([{"selector": "th", "props": "text-align: left"}])


def problems_html(before: Mapping[str, Any]) -> str:
    """A document's problems, whole, for the line above its before/after table."""

    return "".join(
        f"<li><b>{html.escape(str(p.get('severity')))}</b> <code>{html.escape(str(p.get('code')))}</code>: "
        f"{html.escape(str(p.get('message')))}</li>"
        for p in before.get("_problems", ())
    )


def before_after_view(
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]], derived_from: Mapping[str, Mapping[str, Sequence[str]]] | None = None
) -> Any:
    """Filters (action, problem) and a document picker over the examples when interactive, opening on a document
    that changes, followed by the same documents as a static table (what a saved notebook and its pages keep:
    a widget cannot be shown without its kernel); the whole table, static, otherwise."""
    frame = before_after_frame(pairs, derived_from)
    if not is_interactive() or frame.empty:
        return before_after_styled(frame)

    befores = {document_label(before): before for before, _ in pairs}
    codes = sorted({c for cell in frame["problems"] for c in cell.split(", ") if c})
    action = widgets.Dropdown(options=[ALL, *dict.fromkeys(frame["action"])], description="action")
    problem = widgets.Dropdown(options=[ALL, *codes], description="problem")
    picker = widgets.Dropdown(options=filter_choices(frame), description="document", layout=widgets.Layout(width="32em"))
    output = widgets.Output()

    def refilter(_: Any = None) -> None:
        picker.options = filter_choices(frame, action.value, problem.value)

    def show(_: Any = None) -> None:
        output.clear_output()
        with output:
            if picker.value is None:
                ipython.display(ipython.HTML("<p>No example document has this action and problem.</p>"))
            else:
                problems = problems_html(befores[picker.value])
                ipython.display(ipython.HTML(f"<ul>{problems}</ul>" if problems else "<p>No problem found in this document.</p>"))
                rows = frame[frame["document"] == picker.value]
                ipython.display(before_after_styled(rows.drop(columns=["document", "action", "problems"])))

    action.observe(refilter, names="value")
    problem.observe(refilter, names="value")
    picker.observe(show, names="value")
    show()
    documents = len(befores)
    ipython.display(described(
        [widgets.HBox([action, problem]), picker, output],
        f"Before/after browser over {documents} example documents (filters: action, problem code); "
        "the table below lists the same documents.",
    ))
    return ipython.HTML(
        f"<details><summary>All {documents} example documents, before and after (the browser's documents, "
        f"as a table the saved notebook keeps)</summary>{before_after_styled(frame).to_html()}</details>"
    )


def described(children: Sequence[Any], text: str) -> Any:
    """A VBox of `children` whose text form is `text`: what a notebook shows of the view where widgets cannot be
    rendered (its default is `VBox(children=(HBox(…`)."""

    class Described(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
            bundle = dict(super()._repr_mimebundle_(**kwargs))
            bundle["text/plain"] = text
            return bundle

    return Described(list(children))


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def static_outputs(path: Path) -> bool:
    """Drops the widget views from a saved notebook, keeping what each widget left beside it (its text, the static
    table the view functions display): a view needs the kernel that made it, so a notebook reopened later, or
    rendered to HTML, would show "Error displaying widget: model not found" or `VBox(children=…)`. Returns whether
    the file changed."""

    notebook = nbformat.read(path, as_version=4)
    changed = bool(notebook.metadata.pop("widgets", None))
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if WIDGET_VIEW in output.get("data", {}):
                del output.data[WIDGET_VIEW]
                output.data.pop("text/plain", None)  # the widget's repr: `VBox(children=…)`, or a bar at 0 %
                changed = True
            if output.get("output_type") not in ("display_data", "execute_result") or output.data:
                kept.append(output)
        cell.outputs = kept
    if changed:
        nbformat.write(notebook, path)
    return changed


def plan_tables(summary: Any) -> dict[str, pd.DataFrame]:
    """The dry-run's tables, by the name of the CSV each is written to (`<label>_by_status` per table; the side
    rows to create per kind, named as the migration declares them, empty for a migration that creates none)."""
    migration, side = summary.migration, summary.migration.side_rows
    key, value = (side.kind, f"{side.label} to create") if side else ("kind", "side rows to create")
    return {
        **{f"{migration.label(t)}_by_status": status_action_table(summary.by_status.get(t, {})) for t in migration.tables},
        "references_by_type": counts_table(summary.references_by_type, key=key, value=value),
        "problems": problems_table(summary.problems),
    }


def write_tables(tables: Mapping[str, pd.DataFrame], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=frame.index.name is not None)
        paths.append(path)
    return paths


def apply_statistics(summary: Any) -> pd.DataFrame:
    """The statistics the migration's README promises, as one small table."""

    migration = get(summary.migration_id)
    side = migration.side_rows
    rows = {
        **{f"{migration.label(table)} migrated": n for table, n in summary.migrated.items()},
        **({f"{side.label} created": summary.references_created} if side else {}),
        "already applied (not written again)": summary.already_applied,
        "conflicts (left alone)": summary.conflicts,
        "errors": len(summary.errors),
        "batches sent / resumed from checkpoint": f"{summary.batches_sent} / {summary.batches_resumed}",
        "HTTP round trips": summary.round_trips,
        "total execution time (s)": f"{summary.duration_s:.1f}",
        "figures confirmed by the deployment"
        + (f" ({side.label} of this run counted there)" if side else ""): "yes" if summary.statistics_confirmed else "no",
    }
    if summary.recheck:
        rows["re-check"] = "yes: this call only re-confirmed a finished apply; the figures are the first run's"
    return pd.DataFrame({"value": rows})


def outcome_rows(outcomes: Iterable[Any]) -> pd.DataFrame:
    return pd.DataFrame([o.model_dump() for o in outcomes], columns=["table", "id", "outcome", "message"])


def checks_frame(report: Any) -> pd.DataFrame:
    """Verify's checks: one row each, pass/fail, counts and example ids."""
    return pd.DataFrame(
        [
            {
                "check": c.name,
                "result": c.result,
                "checked": c.checked,
                "failed": c.failed,
                "explained": c.explained,
                "example ids": ", ".join(c.examples),
                "what it proves": c.description,
                "note": c.note if c.explained else "",
            }
            for c in report.checks
        ]
    )


def rollback_table(summary: Any) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict({t: dict(c) for t, c in summary.actions.items()}, orient="index").fillna(0).astype(int)
    frame.index.name = "table"
    return frame
