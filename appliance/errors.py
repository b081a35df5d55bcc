"""Domain errors. The API maps them to HTTP answers in one place (appliance/api/errors.py).

    ApplianceError
     +-- NotFoundError            404: no such id
     +-- ConflictError            409: the thing is in use / already exists differently
     +-- InvalidInputError        422: bad upload, bad config; carries per-line details
     +-- TooLargeInputError       413: over a configured size limit
     +-- ModelImportError         422: a model file or folder that cannot be imported
     +-- NoSpaceError             507: a write failed on a full disk; names the path and its free space
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ApplianceError(Exception):
    status_code = 500


class NotFoundError(ApplianceError):
    status_code = 404


class ConflictError(ApplianceError):
    status_code = 409


class TooLargeInputError(ApplianceError):
    status_code = 413


class ModelImportError(ApplianceError):
    status_code = 422


class NoSpaceError(ApplianceError):
    """A write failed because the disk (or a quota, or a file-size limit) is full. Raised only after
    whatever was half-written has been removed, so the message can say that nothing was kept."""

    status_code = 507


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with an input: where (line or row, field) and what."""

    line: int | None
    field: str | None
    message: str
    unit: str = "line"  # "row" for Parquet, where there are no lines

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field:
            where.append(f"field {self.field}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class Problems:
    """Collects InputProblems, keeping the first `keep` and counting the rest."""

    def __init__(self, keep: int = 20) -> None:
        self.items: list[InputProblem] = []
        self.total = 0
        self.keep = keep

    def add(self, line: int | None, field: str | None, message: str, unit: str = "line") -> None:
        self.total += 1
        if len(self.items) < self.keep:
            self.items.append(InputProblem(line, field, message, unit))

    def __bool__(self) -> bool:
        return self.total > 0


@dataclass
class InvalidInputError(ApplianceError):
    source: str
    problems: list[InputProblem]
    total: int = 0
    status_code: int = field(default=422, init=False)

    def __post_init__(self) -> None:
        self.total = max(self.total, len(self.problems))
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {self.total - 3} more)" if self.total > 3 else ""
        return f"{self.source}: {shown}{more}"
