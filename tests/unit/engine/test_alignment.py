"""BarrierAligner: which barriers block, align, or are ignored."""

from __future__ import annotations

from onceflow.engine.alignment import AlignmentResult, BarrierAligner

ALIGNED, WAIT, IGNORE = AlignmentResult.ALIGNED, AlignmentResult.WAIT, AlignmentResult.IGNORE


def test_single_input_aligns_immediately() -> None:
    aligner = BarrierAligner(1)

    assert aligner.on_barrier(0, 1) is ALIGNED
    assert aligner.blocked == [False]
    assert aligner.pending_id is None
    assert aligner.on_barrier(0, 2) is ALIGNED


def test_two_inputs_block_the_first_until_the_second_delivers() -> None:
    aligner = BarrierAligner(2)

    assert aligner.on_barrier(0, 1) is WAIT
    assert aligner.blocked == [True, False]
    assert aligner.pending_id == 1

    assert aligner.on_barrier(1, 1) is ALIGNED
    assert aligner.blocked == [False, False]
    assert aligner.pending_id is None
    assert aligner.last_id == 1


def test_order_of_inputs_does_not_matter() -> None:
    aligner = BarrierAligner(3)

    assert [aligner.on_barrier(c, 5) for c in (2, 0, 1)] == [WAIT, WAIT, ALIGNED]
    assert aligner.last_id == 5


def test_repeated_barrier_on_a_blocked_channel_keeps_waiting() -> None:
    aligner = BarrierAligner(2)
    aligner.on_barrier(0, 1)

    assert aligner.on_barrier(0, 1) is WAIT
    assert aligner.blocked == [True, False]
    assert aligner.on_barrier(1, 1) is ALIGNED


def test_newer_barrier_abandons_an_older_alignment() -> None:
    aligner = BarrierAligner(2)
    assert aligner.on_barrier(0, 1) is WAIT

    assert aligner.on_barrier(1, 2) is WAIT
    assert aligner.pending_id == 2
    assert aligner.blocked == [False, True]

    assert aligner.on_barrier(0, 2) is ALIGNED
    assert aligner.last_id == 2


def test_barrier_of_an_abandoned_checkpoint_arriving_late_is_ignored() -> None:
    aligner = BarrierAligner(2)
    aligner.on_barrier(0, 1)
    aligner.on_barrier(1, 2)
    aligner.on_barrier(0, 2)

    assert aligner.on_barrier(1, 1) is IGNORE
    assert aligner.blocked == [False, False]


def test_barriers_of_a_finished_checkpoint_are_ignored() -> None:
    aligner = BarrierAligner(2)
    aligner.on_barrier(0, 3)
    aligner.on_barrier(1, 3)

    assert aligner.on_barrier(0, 3) is IGNORE
    assert aligner.on_barrier(1, 2) is IGNORE
    assert aligner.blocked == [False, False]
    assert aligner.pending_id is None


def test_abort_unblocks_channels_and_ignores_the_late_barriers() -> None:
    aligner = BarrierAligner(2)
    aligner.on_barrier(0, 4)

    aligner.abort(4)

    assert aligner.blocked == [False, False]
    assert aligner.pending_id is None
    assert aligner.on_barrier(1, 4) is IGNORE
    assert aligner.on_barrier(0, 4) is IGNORE
    assert aligner.on_barrier(0, 5) is WAIT
    assert aligner.on_barrier(1, 5) is ALIGNED


def test_abort_of_a_checkpoint_not_yet_seen_ignores_its_barriers() -> None:
    aligner = BarrierAligner(2)

    aligner.abort(7)

    assert aligner.on_barrier(0, 7) is IGNORE
    assert aligner.on_barrier(1, 6) is IGNORE
    assert aligner.blocked == [False, False]


def test_abort_of_an_older_checkpoint_keeps_the_current_alignment() -> None:
    aligner = BarrierAligner(2)
    aligner.on_barrier(0, 5)

    aligner.abort(3)

    assert aligner.pending_id == 5
    assert aligner.blocked == [True, False]
    assert aligner.on_barrier(1, 5) is ALIGNED


def test_stale_barrier_arriving_after_a_newer_one_is_not_counted_for_it() -> None:
    # Input 0 skipped barrier 1 (its checkpoint was aborted) and delivered 2;
    # input 1's late barrier 1 must not complete the alignment of checkpoint 2.
    aligner = BarrierAligner(2)
    assert aligner.on_barrier(0, 2) is WAIT

    assert aligner.on_barrier(1, 1) is IGNORE
    assert aligner.pending_id == 2
    assert aligner.blocked == [True, False]
    assert aligner.on_barrier(1, 2) is ALIGNED
