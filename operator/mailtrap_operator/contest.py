"""Drift that keeps coming back: when to repair a child again, and when to stop.

A child changed by someone else is put back at once (`reconciler`). If the same
child drifts again soon after, another writer is fighting over it (an
autoscaler that owns replicas, a second controller, a script): repairing at the
speed of its edits would only double the writes, the Events and the load on the
API server. So, per child, each repair that is undone within `QUIET_SECONDS`
counts as a round; the next repair waits `FIRST_BACKOFF` seconds, doubling each
round; once `DRIFT_CONFLICT_ROUNDS` repairs have been undone, the operator gives
up on that child and reports ``Degraded``, reason ``DriftConflict``, naming the
other field manager. It fights again, with a fresh count, when

- the MailtrapWebhook's spec changes (a new generation),
- the child is deleted (whatever fought over it has let it go), or
- no drift came for `QUIET_SECONDS` (the other writer stopped).

Pure: the clock comes in as an argument, and `Contests` only decides; the
reconciler does the repairs and schedules the re-checks it is told about.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from .ledger import ChildKey
from .resources import OwnerKey

# Repairs undone before the operator stops putting a child back.
DRIFT_CONFLICT_ROUNDS: Final = 5
# Wait before the second repair; it doubles for each repair undone since.
FIRST_BACKOFF: Final = 1.0
# Seconds without drift after which a child's contest is over (forgotten, or, for a
# child given up on, repaired once more).
QUIET_SECONDS: Final = 60.0


class Action(enum.Enum):
    REPAIR = "repair"  # now
    WAIT = "wait"  # until `Verdict.delay` has passed, then ask again
    GIVE_UP = "give up"  # just now: report the conflict; a re-check after the delay
    HOLD = "hold"  # given up already: a re-check after the delay


class Verdict(NamedTuple):
    action: Action
    delay: float = 0.0
    writer: str = ""
    rounds: int = 0


@dataclass
class _Contest:
    owner: OwnerKey
    generation: int
    last_drift: float
    next_repair: float
    rounds: int = 0  # repairs done that were undone
    writer: str = ""
    given_up: bool = False


class Contests:
    """The contests under way, per child; see the module docstring."""

    def __init__(
        self,
        *,
        rounds: int = DRIFT_CONFLICT_ROUNDS,
        first_backoff: float = FIRST_BACKOFF,
        quiet: float = QUIET_SECONDS,
    ) -> None:
        self.rounds = rounds
        self.first_backoff = first_backoff
        self.quiet = quiet
        self._contests: dict[ChildKey, _Contest] = {}

    def drifted(
        self,
        key: ChildKey,
        *,
        owner: OwnerKey,
        generation: int,
        now: float,
        writer: str,
        deleted: bool,
    ) -> Verdict:
        """A child drifted: what to do about it now."""
        contest = self._contests.get(key)
        if contest is not None and (
            contest.generation != generation
            or now - contest.last_drift > self.quiet
            or (contest.given_up and deleted)
        ):
            contest = None
        if contest is None:
            self._contests[key] = _Contest(
                owner=owner, generation=generation, last_drift=now, next_repair=now, writer=writer
            )
            return Verdict(Action.REPAIR, writer=writer)
        contest.last_drift = now
        contest.writer = writer or contest.writer
        if contest.given_up:
            return Verdict(Action.HOLD, self.quiet, contest.writer, contest.rounds)
        if contest.rounds >= self.rounds:
            contest.given_up = True
            return Verdict(Action.GIVE_UP, self.quiet, contest.writer, contest.rounds)
        if now < contest.next_repair:
            return Verdict(Action.WAIT, contest.next_repair - now, contest.writer, contest.rounds)
        return Verdict(Action.REPAIR, writer=contest.writer, rounds=contest.rounds)

    def repaired(self, key: ChildKey, *, now: float) -> None:
        """The child was put back: the next repair, should it be undone, waits longer."""
        contest = self._contests.get(key)
        if contest is None:
            return
        contest.rounds += 1
        contest.next_repair = now + self.first_backoff * 2 ** (contest.rounds - 1)

    def recheck(self, key: ChildKey, *, now: float) -> float:
        """Seconds until a waiting child's drift should be handled again: 0 for a
        backoff (`drifted` decides anew); for a child given up on, until it has been
        quiet long enough, when its contest is forgotten and the drift is repaired."""
        contest = self._contests.get(key)
        if contest is None or not contest.given_up:
            return 0.0
        left = contest.last_drift + self.quiet - now
        if left <= 0:
            del self._contests[key]
            return 0.0
        return left

    def held(self, owner: OwnerKey, *, generation: int) -> dict[ChildKey, Verdict]:
        """The children of ``owner`` given up on for this generation, with who fought."""
        return {
            key: Verdict(Action.HOLD, writer=contest.writer, rounds=contest.rounds)
            for key, contest in self._contests.items()
            if contest.owner == owner and contest.given_up and contest.generation == generation
        }

    def given_up(self) -> int:
        return sum(contest.given_up for contest in self._contests.values())

    def forget(self, keys: Iterable[ChildKey]) -> None:
        for key in keys:
            self._contests.pop(key, None)

    def forget_owner(self, owner: OwnerKey) -> None:
        self.forget([key for key, contest in self._contests.items() if contest.owner == owner])
