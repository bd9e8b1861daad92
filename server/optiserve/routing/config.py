"""Settings of one route (``[[routes]]`` in the configuration file)."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.domain.settings import at_least, between, check, require
from optiserve.domain.validation import MAX_NAME_CHARS


@dataclass(frozen=True)
class RouteConfig:
    """A route: a name a request may use instead of a model, and the models it chooses
    from (the cheapest that fits the prompt's complexity, the budget and the context)."""

    name: str
    #: The models (names from [[models]]) this route may choose.
    models: tuple[str, ...]
    #: Complexity score below which the cheap tier is enough, and at or above which the
    #: premium tier is asked for (in between: balanced). Local models serve the lowest
    #: scores when ``local_below`` > 0.
    local_below: float = 0.15
    cheap_below: float = 0.35
    premium_from: float = 0.70
    #: Most models tried for one request (the chosen one plus fallbacks).
    max_attempts: int = 3
    #: Under budget pressure (>= budget.pressure_fraction), compress prompts losslessly.
    compress_under_pressure: bool = True

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(
            len(self.name) <= MAX_NAME_CHARS,
            "name",
            f"must be at most {MAX_NAME_CHARS} characters (requests name it)",
        )
        require(bool(self.models), "models", "must name at least one model")
        check(
            self,
            {
                "local_below": between(0, 1),
                "cheap_below": between(0, 1),
                "premium_from": between(0, 1),
                "max_attempts": at_least(1),
            },
        )
        require(
            self.local_below <= self.cheap_below <= self.premium_from,
            "cheap_below",
            f"thresholds must satisfy local_below <= cheap_below <= premium_from, got "
            f"{self.local_below}, {self.cheap_below}, {self.premium_from}",
        )
