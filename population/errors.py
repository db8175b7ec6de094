"""The archive's errors. Each message is one line, ready for a user to read."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from population.records import Individual


class ArchiveError(Exception):
    """A problem with the archive the user can fix; the message is one line, ready to print."""


class DuplicateSource(ArchiveError):
    """`add_individual` was given a source this run already holds; `.individual` is that one.

    Raised rather than returned so a duplicate child can never be mistaken for a new one: the
    proposer records the proposal as rejected ("duplicate of #N") and moves on.
    """

    def __init__(self, individual: Individual):
        self.individual = individual
        super().__init__(f"same source as individual {individual.id} of run {individual.run_id}")


class DuplicateTrial(ArchiveError):
    """The (individual, seed) pair has been trained already."""


class RunBusy(ArchiveError):
    """`claim_run` found the run driven by another coordinator that is still alive; `.holder` is
    its "host:pid"."""

    def __init__(self, message: str, holder: str):
        self.holder = holder
        super().__init__(message)


class ClaimLost(ArchiveError):
    """`heartbeat` found the run no longer claimed by this coordinator (another one took it over
    after this one went quiet for too long): the caller must stop driving it."""
