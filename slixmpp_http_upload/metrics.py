"""Counters of one upload service: slots made (MongooseIM's ``create_slot``) and refusals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SlotMetrics:
    """``create_slot`` count and total seconds for one service host, and refusals by reason."""

    host: str
    create_slot: int = 0
    create_slot_seconds: float = 0.0
    refusals: Counter[str] = field(default_factory=Counter)

    def slot_created(self, seconds: float) -> None:
        self.create_slot += 1
        self.create_slot_seconds += seconds

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1
