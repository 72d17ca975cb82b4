"""The tables and chart an auditor reads: whole reasons and every example id, one colour per action."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import pytest
from matplotlib.colors import to_rgba

from helpers import display

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
