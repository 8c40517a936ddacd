"""The doctor's report: check statuses, :class:`Check`, :class:`GpuInfo` and :class:`DoctorReport`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class GpuInfo:
    index: int
    name: str
    compute_capability: str
    total_memory_gib: float
    free_memory_gib: float | None
    bf16: bool


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    gpus: list[GpuInfo] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    driver: str | None = None

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    @property
    def usable(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def summary(self) -> str:
        n_fail = sum(c.status == FAIL for c in self.checks)
        n_warn = sum(c.status == WARN for c in self.checks)
        where = "CPU only" if self.cpu_only else f"{len(self.gpus)} GPU(s): {self.gpus[0].name}"
        verdict = "usable" if self.usable else "NOT usable"
        return f"{where}; {verdict} ({n_fail} failed, {n_warn} warnings)"

    def exit_code(self) -> int:
        return 0 if self.usable else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "cpu_only": self.cpu_only,
            "summary": self.summary,
            "versions": dict(self.versions),
            "driver": self.driver,
            "gpus": [asdict(g) for g in self.gpus],
            "checks": [asdict(c) for c in self.checks],
        }
