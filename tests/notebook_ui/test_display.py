"""The tables and chart an auditor reads: whole reasons and every example id, one colour per action."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import pytest
from matplotlib.colors import to_rgba

from helpers.notebook_ui import display

matplotlib.use("Agg")

LONG_REASON = "s3ChunkUrl names bucket media-eu but s3ChunkKey belongs to bucket media-us; the URL is not derived from the key"
IDS = [f"j57{n:017d}" for n in range(12)]


def test_problems_table_keeps_the_whole_reason_and_every_example_id() -> None:
    problems = [SimpleNamespace(table="scenes", code="url_key_mismatch", severity="blocking", count=1234, message=LONG_REASON, examples=IDS)]
    frame = display.problems_table(problems)
    assert frame.loc[0, "message (first seen)"] == LONG_REASON and frame.loc[0, "example ids"] == ", ".join(IDS)
    html = display.problems_styled(frame).to_html()
    assert LONG_REASON in html and all(i in html for i in IDS) and "1,234" in html
    assert "white-space: pre-wrap" in html and "text-align: left" in html


@pytest.mark.parametrize("action", ["problem", "no_change", "migrate", "a_new_action"])
def test_each_action_has_one_colour_in_every_panel(action: str) -> None:
    by_status = {
        "scenes": {"completed": {"migrate": 5, "no_change": 2, action: 1}, "failed": {"problem": 3}},
        "videoSessions": {"completed": {action: 4, "fill_missing": 1}},
    }
    figure = display.plan_chart(by_status)
    colours = []
    for axis in figure.axes:
        handles, labels = axis.get_legend_handles_labels()
        container = handles[labels.index(action)]
        colours.append(container.patches[0].get_facecolor())
    assert len(colours) == 2 and colours[0] == colours[1] == to_rgba(display.action_colour(action))


def test_the_known_actions_have_distinct_colours() -> None:
    assert len({display.action_colour(a) for a in display.ACTION_ORDER}) == len(display.ACTION_ORDER)


@pytest.mark.parametrize("recheck", [False, True])
def test_apply_statistics_say_whether_the_deployment_confirmed_them_and_whether_this_was_a_recheck(recheck: bool) -> None:
    summary = SimpleNamespace(migration_id="001_s3_asset_tracking", migrated={"scenes": 3, "videoSessions": 1}, references_created=9, already_applied=0, conflicts=0,
                              errors=[], batches_sent=2, batches_resumed=0, round_trips=5, duration_s=1.0,
                              statistics_confirmed=not recheck, recheck=recheck)
    rows = display.apply_statistics(summary)["value"]
    confirmed = next(v for k, v in rows.items() if k.startswith("figures confirmed"))
    assert confirmed == ("no" if recheck else "yes")
    assert ("re-check" in rows.index) is recheck


def test_problems_table_counts_documents_and_wraps_between_ids() -> None:
    problems = [SimpleNamespace(table="scenes", code="c", severity="blocking", count=2, message="m", examples=IDS[:2])]
    frame = display.problems_table(problems)
    assert list(frame.columns)[3] == "documents"
    html = display.problems_styled(frame).to_html()
    assert "word-break: keep-all" in html  # the ids' column: wrapped between ids only
    assert "overflow-wrap: anywhere" in html  # the message's column: wrapped anywhere


def test_checks_table_has_no_index_column_and_left_aligned_text() -> None:
    report = SimpleNamespace(checks=[
        SimpleNamespace(name="planned_written", result="pass", checked=10, failed=0, explained=0, examples=[], description="d", note=""),
        SimpleNamespace(name="references_match", result="fail", checked=10, failed=1, explained=0, examples=IDS[:1], description="d", note=""),
    ])
    html = display.checks_styled(display.checks_frame(report)).to_html()
    assert 'class="row_heading' not in html and "text-align: left" in html
    assert "#fde2e1" in html and "#e6f4ea" in html


def test_a_saved_notebook_keeps_no_widget_view(tmp_path) -> None:  # noqa: ANN001
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    widget = {display.WIDGET_VIEW: {"model_id": "abc"}, "text/plain": "VBox(children=(HBox(children=(Dropdown("}
    notebook.cells = [nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data=widget),
        nbformat.v4.new_output("display_data", data={"text/html": "<table>the static copy</table>"}),
        nbformat.v4.new_output("stream", name="stdout", text="apply: 10/10 doc (100%) in 00:01"),
    ])]
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    assert display.static_outputs(path) is True
    text = path.read_text()
    assert "VBox(children" not in text and "abc" not in text and "widget-state" not in text
    assert "the static copy" in text and "apply: 10/10" in text
    assert display.static_outputs(path) is False  # nothing left to drop: the file is not rewritten
