"""The classifier's vocabulary: ordered risks and levels, indicators, and the verdict being built.

`Risk` and `Level` are string enums whose comparison operators follow their severity order, not the
alphabet, so `max()` and `<` do what a reader expects.
"""

import enum
from dataclasses import dataclass
from typing import Self


class _Ranked(enum.StrEnum):
    """A string enum ordered by declaration, lowest first."""

    @property
    def rank(self) -> int:
        """Position in the severity order, starting at 0."""
        return list(type(self)).index(self)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank >= other.rank


class Risk(_Ranked):
    """How much damage a command could do, ordered `LOW < MEDIUM < HIGH < CRITICAL`."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Level(_Ranked):
    """The capability level a probe needs to run a command, ordered `OBSERVE < DIAGNOSE < REMEDIATE`."""

    OBSERVE = "observe"
    DIAGNOSE = "diagnose"
    REMEDIATE = "remediate"

    def allows(self, required: "Level") -> bool:
        """Tell whether a probe at this level may run a command that requires `required`."""
        return self >= required


@dataclass(frozen=True)
class Indicator:
    """One reason behind a classification.

    Attributes:
        code: Stable machine string naming the rule (see the codes in `classifier`).
        detail: Human-readable explanation, e.g. ``"rm -rf on /"``.
        risk: The risk this reason alone implies.
    """

    code: str
    detail: str
    risk: Risk


@dataclass(frozen=True)
class Classification:
    """The classifier's answer for one command.

    Attributes:
        risk: The highest risk of any indicator.
        required_level: The lowest probe level allowed to run the command.
        indicators: Every reason found, in discovery order, without duplicates.
        parsed: False when the classifier could not tell statically what the command would run.
        programs: Every program the command would run, wrappers included, in first-seen order.
    """

    risk: Risk
    required_level: Level
    indicators: tuple[Indicator, ...]
    parsed: bool
    programs: tuple[str, ...]


GUESS_BUDGET = 4000
"""How many guesses for run-time command names one classification may try (bounds the work)."""


class Verdict:
    """A mutable collector of findings, turned into a `Classification` at the end."""

    def __init__(self) -> None:
        self.findings: list[tuple[Indicator, Level]] = []
        self.programs: list[str] = []
        self.parsed = True
        self._seen: set[tuple[Indicator, Level]] = set()
        self.guesses_left = GUESS_BUDGET

    def add(self, code: str, detail: str, risk: Risk, level: Level) -> None:
        """Record one finding; identical findings are kept once."""
        finding = (Indicator(code, detail, risk), level)
        if finding not in self._seen:
            self._seen.add(finding)
            self.findings.append(finding)

    def unparsed(self, code: str, detail: str, risk: Risk = Risk.HIGH) -> None:
        """Record something the classifier cannot see through; it needs remediate."""
        self.parsed = False
        self.add(code, detail, risk, Level.REMEDIATE)

    def program(self, name: str) -> None:
        """Record that `name` would run."""
        if name not in self.programs:  # a handful of names; a list keeps their order
            self.programs.append(name)

    @property
    def risk(self) -> Risk:
        """The highest risk found so far (LOW when nothing was found)."""
        return max((indicator.risk for indicator, _ in self.findings), default=Risk.LOW)

    @property
    def level(self) -> Level:
        """The highest level required so far (OBSERVE when nothing was found)."""
        return max((level for _, level in self.findings), default=Level.OBSERVE)

    def merge(self, other: Self, *, prefix: str = "") -> None:
        """Fold another verdict's findings (not its programs) into this one, prefixing their details."""
        for indicator, level in other.findings:
            self.add(indicator.code, prefix + indicator.detail, indicator.risk, level)
        self.parsed = self.parsed and other.parsed

    def result(self) -> Classification:
        """Freeze the findings into a `Classification`."""
        return Classification(
            risk=self.risk,
            required_level=self.level,
            indicators=tuple(indicator for indicator, _ in self.findings),
            parsed=self.parsed,
            programs=tuple(self.programs),
        )
