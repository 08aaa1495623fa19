"""Cluster presets as ``FabricSpec``s: the tables of ``data/clusters.toml``, a user's cluster file with the same keys,
or a ``cluster.ClusterSpec`` with the file's fabric defaults. Units as the file writes them (GB/s, Gb/s, seconds),
converted here to bytes/s and seconds; achievable bandwidth = peak * fraction. Split out of ``topology.py``, which
holds the spec itself and the fabric graph built from it."""

from __future__ import annotations

import math
import tomllib
from functools import lru_cache
from pathlib import Path

from gpuhours.hwmodels.topology import TIERS, FabricSpec

DATA_FILE = Path(__file__).resolve().parent / "data" / "clusters.toml"
_GIGA = 1e9


@lru_cache(maxsize=1)
def _data() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)


def list_cluster_presets() -> list[str]:
    return list(_data()["preset"])


# Keys of a preset table in clusters.toml, and of a user's cluster file: name -> (kind, default or REQUIRED).
REQUIRED = object()
CLUSTER_KEYS: dict[str, tuple[str, object]] = {
    "gpu": ("str", REQUIRED),                   # a gpus.toml key or alias
    "gpus": ("int", REQUIRED),
    "gpus_per_node": ("int", REQUIRED),         # GPUs of one NVLink domain (72 for an NVL72 rack)
    "nvlink_peak_gb_s": ("number", REQUIRED),   # per GPU, one direction
    "nvlink_fraction": ("fraction", REQUIRED),
    "nvlink_latency_s": ("number", REQUIRED),
    "nic_gbit_s": ("number", REQUIRED),         # per GPU NIC (line rate)
    "nic_fraction": ("fraction", REQUIRED),
    "ib_latency_s": ("number", REQUIRED),
    "pcie_gb_s": ("number", REQUIRED),
    "switch_hop_latency_s": ("number", REQUIRED),
    "planes": ("int", REQUIRED),
    "rail_optimised": ("bool", REQUIRED),
    "switch_radix": ("int", REQUIRED),
    "gpus_per_leaf": ("int", REQUIRED),
    "oversubscription": ("number", REQUIRED),
    "tiers": ("tiers", REQUIRED),               # 2, 3 or "auto"
    "name": ("str", None),                      # a cluster file's name in reports (default: the file's stem)
    "description": ("str", None),
    "leaves_per_pod": ("int0", 0),
    "core_oversubscription": ("number", 1.0),
    "su_nodes": ("int0", 0),
}
_KIND_TEXT = {"str": "a string", "int": "an integer >= 1", "int0": "an integer >= 0", "bool": "true or false",
              "number": "a number", "fraction": "a number in (0, 1]", "tiers": '2, 3 or "auto"'}


def _is_source_key(key: str) -> bool:
    return key == "source" or key.endswith("_source")


def _allowed_keys() -> str:
    return ", ".join(CLUSTER_KEYS) + ", source, <anything>_source"


def _check_value(key: str, kind: str, v, where: str):
    ok = {
        "str": isinstance(v, str),
        "int": isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "int0": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "bool": isinstance(v, bool),
        "number": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
        "fraction": isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
        "tiers": v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v in TIERS),
    }[kind]
    if not ok:
        raise ValueError(f"{where}: key {key!r} must be {_KIND_TEXT[kind]}, got {v!r}")
    return v


def fabric_from_table(table: dict, name: str, where: str | None = None) -> FabricSpec:
    """A FabricSpec from a preset table's keys (``CLUSTER_KEYS``, plus ``source`` / ``*_source`` strings).
    Achievable bandwidth = peak * fraction. Raises one-line ValueErrors naming a missing, unknown or bad key."""
    where = where or f"cluster {name!r}"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of cluster keys, got {type(table).__name__}")
    for key, v in table.items():
        if _is_source_key(key):
            if not isinstance(v, str):
                raise ValueError(f"{where}: key {key!r} must be a string, got {v!r}")
        elif key not in CLUSTER_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; allowed keys: {_allowed_keys()}")
    p = {}
    for key, (kind, default) in CLUSTER_KEYS.items():
        if key not in table:
            if default is REQUIRED:
                raise ValueError(f"{where}: missing key {key!r}; allowed keys: {_allowed_keys()}")
            p[key] = default
        else:
            p[key] = _check_value(key, kind, table[key], where)
    from gpuhours.hwmodels.gpus import load_gpu

    try:
        gpu = load_gpu(p["gpu"]).key
    except ValueError as exc:
        raise ValueError(f"{where}: key 'gpu': {exc}") from None
    auto = p["tiers"] == "auto"
    try:
        return FabricSpec(
            name=p["name"] or name,
            gpu=gpu,
            gpus=p["gpus"],
            gpus_per_node=p["gpus_per_node"],
            nvlink_bw=float(p["nvlink_peak_gb_s"]) * float(p["nvlink_fraction"]) * _GIGA,
            nvlink_latency=float(p["nvlink_latency_s"]),
            nic_bw=float(p["nic_gbit_s"]) / 8 * float(p["nic_fraction"]) * _GIGA,
            ib_latency=float(p["ib_latency_s"]),
            pcie_bw=float(p["pcie_gb_s"]) * _GIGA,
            switch_hop_latency=float(p["switch_hop_latency_s"]),
            planes=p["planes"],
            rail_optimised=p["rail_optimised"],
            switch_radix=p["switch_radix"],
            gpus_per_leaf=p["gpus_per_leaf"],
            oversubscription=float(p["oversubscription"]),
            tiers=TIERS[0] if auto else p["tiers"],
            leaves_per_pod=p["leaves_per_pod"],
            core_oversubscription=float(p["core_oversubscription"]),
            su_nodes=p["su_nodes"],
            auto_tiers=auto,
            sources=tuple((k, v) for k, v in table.items() if _is_source_key(k)),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def is_cluster_file(name) -> bool:
    return str(name).endswith(".toml")


def load_cluster_file(path: str | Path, **overrides) -> FabricSpec:
    """A user's cluster: a TOML file holding the keys of a clusters.toml preset table (``CLUSTER_KEYS``), at
    top level or inside one ``[cluster]`` table; validated strictly (one-line ValueError naming the key)."""
    path = Path(path)
    where = f"cluster file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid TOML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None
    if "cluster" in doc:
        if set(doc) != {"cluster"} or not isinstance(doc["cluster"], dict):
            raise ValueError(f"{where}: put the keys either all at top level or all inside one [cluster] table")
        doc = doc["cluster"]
    spec = fabric_from_table(doc, path.stem, where)
    return _with_overrides(spec, overrides, where)


def _with_overrides(spec: FabricSpec, overrides: dict, where: str) -> FabricSpec:
    if not overrides:
        return spec
    try:
        return spec.with_(**overrides)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_cluster_preset(name: str, **overrides) -> FabricSpec:
    """The FabricSpec of preset ``name`` in clusters.toml (achievable = peak * fraction), or of a cluster file when
    ``name`` ends in ``.toml`` (``load_cluster_file``), with overrides (``gpus=...`` re-chooses the tier count of a
    preset whose tiers are "auto"; ``tiers=2|3`` forces it)."""
    if is_cluster_file(name):
        return load_cluster_file(name, **overrides)
    presets = _data()["preset"]
    if name not in presets:
        raise ValueError(f"unknown cluster preset {name!r}; allowed: {', '.join(presets)} or a cluster .toml file")
    spec = fabric_from_table(presets[name], name)
    if overrides:
        return spec.with_(**overrides)
    return spec


def fabric_from_cluster(cluster, **overrides) -> FabricSpec:
    """A FabricSpec around a ``cluster.ClusterSpec`` (its achievable NVLink/IB figures and latencies), with the
    fabric defaults of clusters.toml [defaults] (rail-optimised, one plane, 64-port switches, tiers chosen from the
    size)."""
    d = _data()["defaults"]
    gpus = max(cluster.num_gpus, cluster.gpus_per_node)
    spec = FabricSpec(
        name=f"{cluster.gpu.key}-x{gpus}",
        gpu=cluster.gpu.key,
        gpus=gpus,
        gpus_per_node=cluster.gpus_per_node,
        nvlink_bw=cluster.nvlink_bw,
        nvlink_latency=cluster.nvlink_latency,
        nic_bw=cluster.ib_bw,
        ib_latency=cluster.ib_latency,
        pcie_bw=max(float(d["pcie_gb_s"]) * _GIGA, cluster.ib_bw),
        switch_hop_latency=float(d["switch_hop_latency_s"]),
        planes=int(d["planes"]),
        rail_optimised=bool(d["rail_optimised"]),
        switch_radix=int(d["switch_radix"]),
        gpus_per_leaf=int(d["gpus_per_leaf"]),
        oversubscription=float(d["oversubscription"]),
        tiers=TIERS[0] if d["tiers"] == "auto" else int(d["tiers"]),
        auto_tiers=d["tiers"] == "auto",
        sources=(("source", d["source"]),),
    )
    return spec.with_(**overrides) if overrides else spec
