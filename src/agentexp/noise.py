"""The one seed-noise rule: how far apart seed runs of one configuration land, and when a challenger beats
an incumbent beyond that band (the code experiments' keep rule and the planner's incumbent use it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class SeedGroup(Protocol):
    """One configuration's seed runs aggregated (a ranking.Entry, the planner's Group)."""

    n: int
    std: float | None


def band(entries: Iterable[SeedGroup]) -> float:
    """The seed noise of a mission: the largest seed spread (std) of a configuration with several seed
    runs, 0 until one has them."""
    spreads = [e.std for e in entries if e.n > 1 and e.std is not None]
    return max(spreads, default=0.0)


def gain(challenger: float, incumbent: float, direction: str) -> float:
    """How much better the challenger is, in metric units (negative when worse)."""
    return (challenger - incumbent) * (1 if direction == "maximize" else -1)


def beats(challenger: float, incumbent: float, noise: float, direction: str) -> bool:
    """True when the challenger is better than the incumbent by more than the noise band."""
    return gain(challenger, incumbent, direction) > noise
