"""Field types of the campaign file's sections: paths resolved against the campaign file's folder,
positive numbers, and the base of every section (unknown keys are refused)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir", Path.cwd()))
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    return path


FilePath = Annotated[Path, AfterValidator(_existing_file)]   # must exist
AnyPath = Annotated[Path, AfterValidator(resolve_path)]           # need not exist
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Grid = tuple[PosInt, PosInt, PosInt]


class Section(BaseModel):
    """A section of the campaign file: unknown keys are refused."""
    model_config = ConfigDict(extra="forbid")
