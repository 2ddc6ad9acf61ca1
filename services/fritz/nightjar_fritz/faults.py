"""Test-only fault injection for the Fritz-like service (`fritz.server.faults_enabled`).

Input: POST /_test/faults {"mode": "error"|"stall", "status": 500, "count": N, "seconds": S,
"methods": ["POST"], "path_prefix": "/api/"}. Output: the next N matching API requests are
answered with `status`, or handled only after `seconds` (as a slow server would: the write
still happens, after the client may have given up). {"count": 0} clears the plan.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FaultPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["error", "stall"] = "error"
    status: int = Field(default=500, ge=400, le=599)
    count: int = Field(default=1, ge=0, le=100_000)
    seconds: float = Field(default=0.0, ge=0, le=600)
    methods: list[str] | None = None
    path_prefix: str = "/api/"

    def applies(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return path.startswith(self.path_prefix)


class Faults:
    """The current plan and how many requests it still affects (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan: FaultPlan | None = None
        self._left = 0
        self._injected = 0

    def set(self, plan: FaultPlan) -> dict[str, Any]:
        with self._lock:
            self._plan = plan if plan.count > 0 else None
            self._left = plan.count
        return self.state()

    def take(self, method: str, path: str) -> FaultPlan | None:
        """The plan if this request is to be faulted (uses up one of its count)."""
        with self._lock:
            if self._plan is None or self._left <= 0 or not self._plan.applies(method, path):
                return None
            self._left -= 1
            self._injected += 1
            return self._plan

    def state(self) -> dict[str, Any]:
        with self._lock:
            plan = self._plan.model_dump() if self._plan else None
            return {"plan": plan, "left": self._left, "injected": self._injected}
