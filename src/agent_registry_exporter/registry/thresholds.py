"""The limits a session and a registry may reach: what the checks, the exported threshold
gauges and the rendered alert rules all read (never a copy)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Thresholds"]


class Thresholds(BaseModel):
    """Limits a session may reach; each one is exceeded only when strictly greater."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agents_per_user: int = Field(default=50, gt=0, description="agents in one user's session")
    # Finite: an infinite limit is no limit of seconds (it printed a second +Inf bucket).
    session_age_seconds: float = Field(
        default=24 * 3600, gt=0, allow_inf_nan=False, description="age of a session"
    )
    total_agents: int = Field(default=500, gt=0, description="agents in one registry")

    def user_issues(self, agent_count: int, uptime_seconds: float) -> list[str]:
        """The issue strings for one session, in the seed system's exact wording."""
        issues = []
        if agent_count > self.agents_per_user:
            issues.append(f"Too many agents: {agent_count}")
        if uptime_seconds > self.session_age_seconds:
            issues.append(f"Session too old: {uptime_seconds / 3600:.1f}h")
        return issues

    def total_issues(self, total_agents: int) -> list[str]:
        """The issue strings for a whole registry."""
        if total_agents > self.total_agents:
            return [f"Too many agents in total: {total_agents}"]
        return []
