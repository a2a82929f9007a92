"""``papers/<paper>/paper.yaml``, read and validated against ``paper.schema.yaml`` (beside this
file), so a mistyped key fails before any report is written, naming the key."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jsonschema
import yaml

__all__ = ["PaperMetaError", "load_paper_meta", "paper_schema"]

REPO_ROOT = Path(__file__).resolve().parents[3]


class PaperMetaError(ValueError):
    """A ``paper.yaml`` that does not follow the schema."""


@cache
def paper_schema() -> dict:
    return yaml.safe_load((Path(__file__).with_name("paper.schema.yaml")).read_text())


def validate_paper_meta(meta: object, source: str) -> dict:
    validator = jsonschema.Draft202012Validator(paper_schema())
    errors = sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source} does not follow common/run/reports/paper.schema.yaml:"]
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {where}: {err.message}")
        raise PaperMetaError("\n".join(lines))
    return meta


def load_paper_meta(paper: str, root: Path = REPO_ROOT) -> dict:
    """The validated contents of ``papers/<paper>/paper.yaml``."""
    path = root / "papers" / paper / "paper.yaml"
    if not path.exists():
        raise PaperMetaError(f"{path} does not exist: every paper needs one (see README.md)")
    return validate_paper_meta(yaml.safe_load(path.read_text()), str(path))
