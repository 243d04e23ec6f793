"""Watermark arithmetic: bounded out-of-orderness, idleness, and combining several inputs."""

from __future__ import annotations

import math

import pytest

from onceflow.operators.watermarks import (
    InputWatermarks,
    WatermarkUpdate,
    bounded_out_of_orderness,
    has_been_idle,
    min_active,
)

INF = math.inf
ADVANCED, UNCHANGED, IDLE, ENDED = (
    WatermarkUpdate.ADVANCED,
    WatermarkUpdate.UNCHANGED,
    WatermarkUpdate.IDLE,
    WatermarkUpdate.ENDED,
)


def test_bounded_out_of_orderness_trails_the_largest_timestamp_by_the_delay():
    assert bounded_out_of_orderness(10.0, 2.5) == 7.5
    assert bounded_out_of_orderness(10.0, 0.0) == 10.0  # monotonous timestamps
    assert bounded_out_of_orderness(-INF, 5.0) == -INF  # nothing seen yet


@pytest.mark.parametrize(("now", "idle"), [(104.9, False), (105.0, True), (200.0, True)])
def test_idle_once_the_timeout_has_passed_since_the_last_activity(now, idle):
    assert has_been_idle(100.0, now, 5.0) is idle


def test_min_active_leaves_out_idle_and_ended_inputs():
    assert min_active([3.0, 1.0, 2.0], [False, True, False], [False, False, False]) == 2.0
    assert min_active([3.0, 1.0, 2.0], [False, False, False], [False, False, True]) == 1.0
    assert min_active([3.0, 1.0], [True, False], [False, True]) is None
    assert min_active([], [], []) is None


def test_combined_watermark_is_the_minimum_and_only_moves_up():
    inputs = InputWatermarks(2)
    assert inputs.on_watermark(0, 5.0) is UNCHANGED  # input 1 still at -inf
    assert inputs.combined == -INF
    assert inputs.on_watermark(1, 3.0) is ADVANCED
    assert inputs.combined == 3.0
    assert inputs.on_watermark(1, 2.0) is UNCHANGED  # an input's watermark never goes back
    assert inputs.on_watermark(1, 9.0) is ADVANCED
    assert inputs.combined == 5.0


def test_an_idle_input_does_not_hold_back_the_others():
    inputs = InputWatermarks(2)
    inputs.on_watermark(0, 10.0)
    assert inputs.on_idle(1) is ADVANCED
    assert inputs.combined == 10.0
    assert inputs.idle == [False, True]


def test_every_open_input_idle_is_reported_as_idle_without_moving_event_time():
    inputs = InputWatermarks(2)
    inputs.on_watermark(0, 4.0)
    inputs.on_watermark(1, 6.0)
    assert inputs.on_idle(0) is ADVANCED
    assert inputs.on_idle(1) is IDLE
    assert inputs.combined == 6.0


def test_an_input_back_from_idleness_behind_the_others_does_not_move_event_time_back():
    inputs = InputWatermarks(2)
    inputs.on_idle(1)
    inputs.on_watermark(0, 10.0)
    inputs.on_records(1)
    assert inputs.idle == [False, False]
    assert inputs.on_watermark(1, 4.0) is UNCHANGED  # min is 4, but 10 was already reported
    assert inputs.combined == 10.0
    assert inputs.on_watermark(1, 12.0) is UNCHANGED  # input 0 is the minimum now
    assert inputs.on_watermark(0, 11.0) is ADVANCED
    assert inputs.combined == 11.0


def test_records_end_idleness_but_only_the_next_watermark_counts():
    inputs = InputWatermarks(2)
    inputs.on_watermark(0, 10.0)
    inputs.on_idle(1)
    inputs.on_records(1)
    assert inputs.combined == 10.0  # nothing recomputed on records: no per-batch cost


def test_an_ended_input_is_left_out_and_the_last_end_is_reported():
    inputs = InputWatermarks(3)
    inputs.on_watermark(0, 1.0)
    inputs.on_watermark(1, 5.0)
    inputs.on_watermark(2, 7.0)
    assert inputs.on_end(0) is ADVANCED
    assert inputs.combined == 5.0
    assert inputs.on_end(1) is ADVANCED
    assert inputs.combined == 7.0
    assert not inputs.ended
    assert inputs.on_end(2) is ENDED
    assert inputs.ended


def test_an_idle_input_that_ends_changes_nothing():
    inputs = InputWatermarks(2)
    inputs.on_watermark(0, 3.0)
    inputs.on_idle(1)
    assert inputs.on_end(1) is UNCHANGED
    assert inputs.combined == 3.0


def test_the_last_open_input_ending_while_the_others_are_idle_reports_idle():
    inputs = InputWatermarks(3)
    inputs.on_end(0)
    inputs.on_idle(1)
    assert inputs.on_end(2) is IDLE


def test_two_input_gates_compose_to_the_same_watermark_as_one_over_all_channels():
    """A two-input operator: one InputWatermarks per gate, combined by an InputWatermarks(2)."""
    flat = InputWatermarks(4)  # channels 0, 1 of the left gate, 2, 3 of the right
    gates = [InputWatermarks(2), InputWatermarks(2)]
    sides = InputWatermarks(2)

    def feed(channel: int, news: str, value: float = 0.0) -> None:
        gate, local = gates[channel // 2], channel % 2
        if news == "watermark":
            flat.on_watermark(channel, value)
            update = gate.on_watermark(local, value)
        elif news == "idle":
            flat.on_idle(channel)
            update = gate.on_idle(local)
        else:
            flat.on_end(channel)
            update = gate.on_end(local)
        side = channel // 2
        if update is ADVANCED:
            sides.on_watermark(side, gate.combined)
        elif update is IDLE:
            sides.on_idle(side)
        elif update is ENDED:
            sides.on_end(side)

    steps = [
        (0, "watermark", 5.0),
        (1, "watermark", 7.0),
        (2, "watermark", 3.0),
        (3, "watermark", 4.0),
        (2, "watermark", 8.0),
        (3, "idle", 0.0),
        (0, "watermark", 9.0),
        (1, "watermark", 12.0),
        (2, "idle", 0.0),  # the right input is idle as a whole: it no longer holds the left back
        (0, "end", 0.0),
        (1, "end", 0.0),
    ]
    seen = []
    for channel, news, value in steps:
        feed(channel, news, value)
        seen.append((flat.combined, sides.combined))
    assert all(a == b for a, b in seen), seen
    assert sides.combined == 12.0
