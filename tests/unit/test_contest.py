"""Drift that keeps coming back: repair, back off, give up, and fight again (contest.py)."""

from __future__ import annotations

from mailtrap_operator.contest import DRIFT_CONFLICT_ROUNDS, Action, Contests

OWNER = ("mail", "hooks")
CHILD = ("Deployment", "mail", "hooks-receiver")
OTHER = ("ConfigMap", "mail", "hooks-receiver")


def drifted(
    contests: Contests, now: float, *, generation: int = 1, deleted: bool = False
) -> Action:
    verdict = contests.drifted(
        CHILD, owner=OWNER, generation=generation, now=now, writer="hpa", deleted=deleted
    )
    return verdict.action


def fight(contests: Contests) -> float:
    """Another writer undoes every repair at once; the time the operator gives up."""
    for step in range(1000):
        now = step / 5  # the other writer's pace
        action = drifted(contests, now)
        if action is Action.GIVE_UP:
            return now
        if action is Action.REPAIR:
            contests.repaired(CHILD, now=now)
    raise AssertionError("never gave up")


def test_the_first_drift_is_repaired_at_once_and_each_undoing_doubles_the_wait() -> None:
    contests = Contests(first_backoff=1.0)
    repairs = []
    for step in range(100):  # 20 s, every 0.2 s
        now = step / 5
        if drifted(contests, now) is Action.REPAIR:
            repairs.append(now)
            contests.repaired(CHILD, now=now)
    # Repaired at once, then after 1, 2, 4 and 8 s: five repairs in 15 s, then no more.
    assert repairs == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert len(repairs) == DRIFT_CONFLICT_ROUNDS


def test_after_the_rounds_it_gives_up_once_naming_the_writer_then_holds() -> None:
    contests = Contests()
    given_up_at = fight(contests)
    held = contests.held(OWNER, generation=1)
    assert list(held) == [CHILD]
    assert (held[CHILD].writer, held[CHILD].rounds) == ("hpa", DRIFT_CONFLICT_ROUNDS)
    assert contests.given_up() == 1
    verdict = contests.drifted(
        CHILD, owner=OWNER, generation=1, now=given_up_at + 1, writer="hpa", deleted=False
    )
    assert verdict.action is Action.HOLD
    assert contests.held(OWNER, generation=2) == {}  # a new spec is fought for again


def test_a_quiet_writer_ends_the_contest_and_the_child_is_repaired_again() -> None:
    contests = Contests(quiet=60.0)
    given_up_at = fight(contests)
    assert contests.recheck(CHILD, now=given_up_at + 30) == 30.0
    assert contests.recheck(CHILD, now=given_up_at + 61) == 0.0
    assert contests.held(OWNER, generation=1) == {}
    assert drifted(contests, given_up_at + 62) is Action.REPAIR


def test_deleting_a_child_given_up_on_or_changing_the_spec_starts_afresh() -> None:
    contests = Contests()
    given_up_at = fight(contests)
    assert drifted(contests, given_up_at + 1, deleted=True) is Action.REPAIR
    contests = Contests()
    given_up_at = fight(contests)
    assert drifted(contests, given_up_at + 1, generation=2) is Action.REPAIR


def test_drift_long_after_the_last_is_a_first_again() -> None:
    contests = Contests(quiet=60.0)
    assert drifted(contests, 0.0) is Action.REPAIR
    contests.repaired(CHILD, now=0.0)
    assert drifted(contests, 0.5) is Action.WAIT
    assert drifted(contests, 100.0) is Action.REPAIR


def test_a_backoff_is_rechecked_at_once_and_forgotten_with_its_owner() -> None:
    contests = Contests()
    assert drifted(contests, 0.0) is Action.REPAIR
    contests.repaired(CHILD, now=0.0)
    verdict = contests.drifted(CHILD, owner=OWNER, generation=1, now=0.4, writer="", deleted=False)
    assert (verdict.action, verdict.delay, verdict.writer) == (Action.WAIT, 0.6, "hpa")
    assert contests.recheck(CHILD, now=1.0) == 0.0
    contests.drifted(OTHER, owner=("mail", "other"), generation=1, now=0, writer="", deleted=False)
    contests.forget_owner(OWNER)
    assert drifted(contests, 1.0) is Action.REPAIR  # a fresh contest
    assert contests.recheck(OTHER, now=1.0) == 0.0
