"""The ``[plugins.bounce_tracker]`` table."""

from __future__ import annotations

from pydantic import Field

from runner import PluginConfig

__all__ = ["BounceTrackerConfig", "ReputationGuard"]


class ReputationGuard(PluginConfig):
    """When an inbox's bounce or complaint rate is too high, its sends pause."""

    enabled: bool = True
    window_hours: int = Field(
        default=24, ge=1, le=720, description="How far back the rates look."
    )
    min_volume: int = Field(
        default=100,
        ge=1,
        description="Messages an inbox must have sent in the window before its "
        "rates count.",
    )
    max_bounce_rate: float = Field(
        default=0.05, gt=0, le=1, description="Permanent bounces per message sent."
    )
    max_complaint_rate: float = Field(
        default=0.001, gt=0, le=1, description="Complaints per message sent."
    )


class BounceTrackerConfig(PluginConfig):
    soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        description="Transient bounces, on separate days, that suppress an address.",
    )
    soft_bounce_quiet_days: float = Field(
        default=14,
        gt=0,
        description="Days without a counted transient bounce after which the count "
        "is forgotten.",
    )
    uncounted_sub_types: list[str] = Field(
        default_factory=lambda: ["General"],
        description="Transient sub-types that never count (General is what "
        "out-of-office replies produce).",
    )
    reputation: ReputationGuard = Field(default_factory=ReputationGuard)

    def counts_toward_limit(self, sub_type: str) -> bool:
        """Whether a transient bounce with this sub-type adds to an address's count."""
        folded = sub_type.strip().lower()
        return all(folded != s.strip().lower() for s in self.uncounted_sub_types)
