"""Model presets (TOML files in `presets/`) and loading a model description from a file.

Preset format: a `[source]` table (provenance: config file, report, published figures) and tables `[model]`,
`[attention]`, `[moe]` (optional) whose keys are the fields of ModelSpec, AttentionSpec and MoESpec (every field
passes through, e.g. `ffn_activation = "gelu"` in [model] for a GPT-style two-matrix FFN; default "swiglu";
the dense shape keys `norm = "layernorm"`, `parallel_block = true`, `positions = "learned"` with
`max_positions = 2048`, `rotary_pct = 0.25`, `ffn_activation = "relu2"`, all in [model]).
`load_model_file` also reads a Hugging Face `config.json` (see hf_config).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.model import AttentionSpec, ModelSpec, MoESpec

_PRESET_DIR = resources.files("gpuhours.workloads") / "presets"
_TABLES = ("source", "model", "attention", "moe")
FILE_SUFFIXES = (".toml", ".json")


def list_presets() -> list[str]:
    """Names of the bundled presets, sorted (file stems of presets/*.toml)."""
    return sorted(p.name[: -len(".toml")] for p in _PRESET_DIR.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> ModelSpec:
    """The bundled preset `name` (case-insensitive), e.g. "deepseek-v3"."""
    names = list_presets()
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in names:
        raise ValueError(f"unknown model preset {name!r}: allowed values are {', '.join(names)}")
    text = (_PRESET_DIR / f"{key}.toml").read_text(encoding="utf-8")
    return model_from_toml_text(text, origin=f"preset {key}")


def load_model_file(path: str | Path) -> ModelSpec:
    """A ModelSpec from a preset-format .toml file or a Hugging Face config.json (any .json)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"model file {str(path)!r}: suffix {suffix!r} not allowed; allowed values are {', '.join(FILE_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"model file {str(path)!r}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if suffix == ".toml":
        return model_from_toml_text(text, origin=str(path))
    try:
        cfg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"model file {str(path)!r}: malformed JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model file {str(path)!r}: expected a JSON object (a Hugging Face config.json)")
    return model_from_hf_config(cfg)  # named by `_name_or_path`, else by `model_type`


def model_from_toml_text(text: str, origin: str = "<toml>") -> ModelSpec:
    """Parse the preset TOML format (see module docstring)."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"{origin}: malformed TOML ({exc})") from None
    return model_from_tables(doc, origin)


def model_from_tables(doc: Mapping[str, Any], origin: str = "<tables>") -> ModelSpec:
    """A ModelSpec from already-parsed tables {source, model, attention, moe?}."""
    extra = sorted(set(doc) - set(_TABLES))
    if extra:
        raise ValueError(f"{origin}: unknown table {extra[0]!r}; allowed values are {', '.join(_TABLES)}")
    for table in ("model", "attention"):
        if not isinstance(doc.get(table), dict):
            raise ValueError(f"{origin}: missing table [{table}]; required tables are model, attention")
    attention = _build(AttentionSpec, doc["attention"], origin, "attention")
    moe = _build(MoESpec, doc["moe"], origin, "moe") if "moe" in doc else None
    model_keys = dict(doc["model"])
    for nested in ("attention", "moe"):
        if nested in model_keys:
            raise ValueError(f"{origin}: [model].{nested} must be its own table [{nested}]")
    return _build(ModelSpec, {**model_keys, "attention": attention, "moe": moe}, origin, "model")


def _build(cls: type, table: Any, origin: str, where: str) -> Any:
    if not isinstance(table, dict):
        raise ValueError(f"{origin}: [{where}] must be a table")
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"{origin}: unknown key [{where}].{unknown[0]}; allowed values are {', '.join(allowed)}")
    try:
        return cls(**table)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{origin}: [{where}] incomplete ({exc}); fields are {', '.join(allowed)}") from None
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None
