"""docs/config.md documents every settings key (the schema is the single source of truth)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from infersight.config import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        nested = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        path = f"{prefix}{name}"
        if nested is not None:
            is_list = getattr(annotation, "__origin__", None) is list
            out.extend(keys(nested, f"{path}[]." if is_list else f"{path}."))
        else:
            out.append(path)
    return out


def test_every_setting_is_documented() -> None:
    missing = [k for k in keys(Settings) if f"`{k}`" not in DOC]
    assert not missing, f"document these keys in docs/config.md: {missing}"
