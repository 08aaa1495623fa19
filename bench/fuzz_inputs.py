"""Input generators of bench/fuzz_cli.py: command lines over every `gpuhours` command's options, and the files
they name (model TOML, HF config.json, plan / sweep / cluster TOML, calibration JSON, Chrome/Kineto traces,
expert-load CSV/NPY), each valid, malformed or extreme.

`make_input(rng, commands)` returns {"args": [...], "files": {relative name: bytes}}; the runner writes the files
into a fresh folder and runs the command there. Commands and options are read from the typer app, so an option
added later is fuzzed too (by its Python type when its name is not in the tables below)."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpuhours.validation.external import profile_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = profile_trace()  # DeepSeek's trace where GPUHOURS_PROFILE_TRACE points, else None: synthetic traces only

ODD_INT = ["0", "-1", "1", "2", "3", "7", "1000003", str(2**31), str(2**63), "1" + "0" * 30, "abc", "", "1.5",
           "inf", "nan", "1e400", "-0", " 8", "0x10", "1_000", "\u0663"]
ODD_FLOAT = ["0", "-1", "-0.0", "1e-300", "1e300", "1e308", "5e-324", "inf", "-inf", "nan", "1e400", "abc", "",
             "0.5", "2", "1e-9", "NaN", "Infinity", "-1e400"]
ODD_STR = ["", " ", "abc", "none", "-1", "nan", "inf", "\u00fc", "a" * 300, "../x", "x:y", "--json", "0"]
ODD_PATH = ["", ".", "nodir/x.png", "x.txt", "x.png", "x.svg", "x.json", "f.txt", "x", "/dev/null"]

# Plausible values by option name (valid alone, extreme in combination).
PLAUSIBLE = {
    "model": ["deepseek-v3", "deepseek-v2", "llama-3-70b", "@model_toml", "@hf_json", "missing.toml", "x.json"],
    "gpu": ["h800", "H100-sxm", "h200-sxm", "a100-40gb-sxm", "b200", "gb200", "mi300x", "tpu-v5"],
    "gpus": ["8", "16", "64", "256", "1024", "2048", "4096", "65536", "1000000", "1"],
    "pp": ["1", "2", "4", "8", "16", "32", "61", "64", "128"], "ep": ["1", "8", "16", "32", "64", "256", "512"],
    "tp": ["1", "2", "4", "8", "16", "64"], "cp": ["1", "2", "4", "8", "32"], "vpp": ["1", "2", "3", "4", "61"],
    "microbatches": ["1", "2", "8", "20", "64", "1000", "1000000", "1000000000"],
    "micro_batch_size": ["1", "2", "4", "64", "100000"],
    "tokens": ["14.8T", "1T", "1e12", "0", "-1T", "1e400", "T", "nanT", "infT", "1P", "10B", "4096", "1000000000"],
    "seq_len": ["1", "128", "4096", "32768", "131072", "10000000"],
    "price": ["0", "2", "1e9", "2.5"], "calibration": ["default-h800", "trace-h800", "bench-h200", "@calib_json",
                                                       "missing.json", "nope"],
    "precision": ["fp8", "bf16", "fp16"], "batch": ["1", "8", "480", "15360", "10000000"],
    "network": ["graph", "alpha-beta", "ring"],
    "cluster": ["deepseek-h800", "dgx-h100", "dgx-h200", "dgx-a100", "roce-h100", "gb200-nvl72", "@cluster_toml",
                "missing.toml"],
    "nic_gbps": ["200", "400", "0.001", "1e6"], "oversubscription": ["1", "2", "0.5", "100"],
    "tiers": ["2", "3", "1", "4"],
    "order": ["tp-cp-dp-pp", "pp-dp-cp-tp", "tp-cp-ep-dp-pp", "tp-tp-dp-pp", "tp,dp", "tp-cp-dp", "dp-tp-pp-cp"],
    "capacity_factor": ["1.0", "1.25", "0.5", "1e-9", "100"],
    "routing": ["balanced", "skew:0", "skew:1.2", "skew:-1", "skew:nan", "skew:inf", "skew:1e400", "skew:",
                "@loads", "@loads", "@loads", "file:missing.csv", "file:", "weights"],
    "redundant_experts": ["0", "1", "8", "32", "256", "1000000"], "redundant": ["0", "1", "8", "256", "1000000"],
    "stage_layers": ["@stage_layers"],
    "recompute": ["none", "deepseek", "selective", "full", "some"], "zero_stage": ["0", "1", "2", "3", "4"],
    "schedule": ["1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev", "gpipe", "zbv"],
    "name": ["1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev", "gpipe"],
    "gantt_window": ["all", "4", "0", "10001", "-1", "abc", "ALL"],
    "workers": ["1", "2", "0", "-1", "64"], "executor": ["serial", "serial", "process", "ray", "threads"],
    "rank_by": ["wall_clock_days", "cost_usd", "gpu_hours", "nope"], "goal": ["cost", "days", "speed"],
    "max_days": ["1", "100", "0", "-5"], "max_simulated": ["1", "2", "4", "0", "-1", "1000000"],
    "top": ["0", "-1", "1", "8", "1000000000"],
    "kind": ["p2p", "all_reduce", "reduce_scatter", "all_gather", "all_to_all", "ep_dispatch", "ep_combine", "x"],
    "group_size": ["1", "2", "8", "64", "2048", "3"], "per_node": ["1", "8", "3", "16"],
    "nbytes": ["1G", "256M", "0", "-1", "1e30", "1e308", "x", "", "1e400", "nanG", "1K", "1T", "3"],
    "hidden": ["7168", "1", "0", "100000000"], "top_k": ["8", "1", "0", "256", "1000"],
    "max_nodes": ["4", "1", "0", "100"], "dtype": ["fp8", "bf16", "fp32"],
    "algorithm": ["auto", "ring", "tree", "hierarchical", "nccl"],
    "gpus_per_node": ["8", "4", "3", "72", "0"], "skew": ["0", "0.5", "1.5", "-1", "50"],
    "steps": ["0", "1", "10", "100", "10000000"], "gamma": ["0.001", "0", "1", "-1"], "seed": ["0", "1", "-1"],
    "spec": ["@sweep_toml", "@sweep_toml", "@sweep_toml", "missing.toml"],
    "out": ["out", "nodir/sub", ".", "f.txt", "out2"], "bench": ["@calib_json", "missing.json"],
    "trace": ["@trace", "@trace", "missing.json", "t.png"], "output": ["o.json", "o.txt", "nodir/o.json"],
    "base": ["default-h800", "trace-h800", "@calib_json", "x"], "device": ["cpu", "cuda", "tpu"],
    "case": ["nomatch*", "deepseek-v3-traced-pair", "korthikanti-22b-full", "[", "*-none"],
    "group": ["nothing", "", "korthikanti"],
}
PATH_OPTIONS = {"gantt": ["g.png", "g.svg"], "chart": ["c.png", "c.svg"], "png": ["t.png"],
                "goodput_chart": ["gc.png"], "goodput_timeline": ["gt.svg"], "sensitivity_chart": ["s.png"]}
# Command weights: a valid estimate, step, routing or validate costs 1-3 CPU seconds, an error milliseconds.
WEIGHTS = {"estimate": 20, "step": 14, "schedule": 10, "collective": 10, "topology": 8, "routing": 7, "plan": 5,
           "sweep": 7, "presets": 1, "validate": 2, "accuracy": 2, "calibrate trace": 6, "calibrate bench": 1}
PLAUSIBLE_SHARE = 0.25  # an option takes a plausible value this often, else an odd one (fuzz_cli --plausible)
# `accuracy` without --case runs all 106 published cases (minutes by design): always narrowed by --case
ALWAYS_NARROWED = ("accuracy",)
HEAVY = {"plan": {"--max-simulated": ["1", "2", "3"], "--executor": ["serial"]},
         "accuracy": {"--case": ["nomatch*", "deepseek-v3-traced-pair", "korthikanti-22b-full"]},
         "calibrate bench": {"--device": ["cuda", "tpu"]}}


def commands_of(app) -> dict[str, list[dict]]:
    """Every leaf command of the typer app: {"calibrate trace": [param, ...]} with each param's
    name, opts, secondary opts, Python type, flag-ness and whether it is a positional argument."""
    import typer.main

    out = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, prefix + [name])
                continue
            out[" ".join(prefix + [name])] = [
                {"name": p.name, "opts": list(p.opts), "secondary": list(p.secondary_opts),
                 "type": getattr(p.bare_type(), "__name__", "str"), "flag": bool(getattr(p, "is_flag", False)),
                 "argument": p.param_type_name == "argument", "required": bool(p.required)}
                for p in cmd.params if p.name != "help"]

    walk(typer.main.get_command(app), [])
    return out


# ------------------------------------------------------------------------------------------------ text files
TOML_ODD = ["0", "-1", "1e400", "nan", "inf", "-inf", '"x"', "[]", "{}", "true", "9223372036854775807",
            "99999999999999999999999", "1.5", "0.0", '""', "[1, 2]", "-1e-300", "1e300"]


def mutate_toml(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines()
    kv = [i for i, ln in enumerate(lines) if "=" in ln and not ln.lstrip().startswith("#")]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.random()
        if op < 0.6 and kv:
            i = rng.choice(kv)
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {rng.choice(TOML_ODD)}"
        elif op < 0.75 and kv:
            lines[rng.choice(kv)] = ""
        elif op < 0.82:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(["unknown_key = 1", "[unknown]", "x = [",
                                                                   "= 3", "[[phase]]", "\x00"]))
        elif op < 0.9 and kv:
            lines.insert(rng.randrange(len(lines) + 1), lines[rng.choice(kv)])  # duplicate key
        elif op < 0.95:
            return "\n".join(lines).encode()[: rng.randrange(len("\n".join(lines)) + 1)]
        else:
            return rng.choice([b"", b"\xff\xfe\x00garbage", b"[[[", "\n".join(lines).encode("utf-16")])
    return ("\n".join(lines) + "\n").encode()


JSON_ODD = [None, -1, 0, 1e308, 10**30, "x", [], {}, True, float("nan"), float("inf"), -1e-300, 0.5, "1e400", 2**64]


def _json_paths(doc, prefix=()):
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        if isinstance(v, (dict, list)) and len(out) < 400:
            out += _json_paths(v, prefix + (k,))
    return out


def mutate_json(rng: random.Random, doc) -> bytes:
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = _json_paths(doc)
        op = rng.random()
        if op < 0.7 and paths:
            path = rng.choice(paths)
            node = doc
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = rng.choice(JSON_ODD)
        elif op < 0.85 and paths:
            path = rng.choice(paths)
            node = doc
            for k in path[:-1]:
                node = node[k]
            if isinstance(node, dict):
                del node[path[-1]]
        elif op < 0.9:
            if isinstance(doc, dict):
                doc["unknown_key"] = rng.choice(JSON_ODD)
        elif op < 0.95:
            text = json.dumps(doc)
            return text.encode()[: rng.randrange(len(text) + 1)]
        else:
            return rng.choice([b"", b"[]", b"null", b"\xff\xfe", b'"x"', b"[1, 2]", b"{" * 5000])
    return json.dumps(doc).encode()


@lru_cache(maxsize=None)
def _text(rel: str) -> str:
    return (ROOT / rel).read_text()


@lru_cache(maxsize=None)
def _cluster_tables() -> list[dict]:
    import tomllib

    return list(tomllib.loads(_text("hwmodels/data/clusters.toml"))["preset"].values())


def _toml_table(d: dict) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items() if isinstance(v, (str, int, float, bool)))


def model_toml(rng):
    name = rng.choice(["deepseek-v3", "deepseek-v2", "llama-3-70b"])
    return mutate_toml(rng, _text(f"workloads/presets/{name}.toml"))


def hf_json(rng):
    base = rng.choice([json.loads(_text("examples/mixtral-8x7b-config.json")),
                       {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128}])
    return json.dumps(base).encode() if rng.random() < 0.1 else mutate_json(rng, base)


def plan_toml(rng):
    return mutate_toml(rng, _text(f"workloads/plans/{rng.choice(['deepseek-v3', 'deepseek-v3-full'])}.toml"))


def sweep_toml(rng):
    keys = {"gpus": ["1024", "2048", "0", "-8", "3"], "pp": ["8", "16", "0", "7"], "tp": ["1", "8", "3"],
            "ep": ["8", "64", "0"], "schedule": ['"dualpipe"', '"1f1b"', '"x"'], "seq_len": ["4096", "0"],
            "precision": ['"fp8"', '"fp4"'], "price": ["2", "-1", "nan"], "cp": ["1", "2"],
            "micro_batch_size": ["1", "0"], "nic_gbps": ["400", "inf"], "goodput_spare_nodes": ["0", "-1"]}
    grid = {k: rng.sample(v, rng.randint(1, 2)) for k, v in rng.sample(sorted(keys.items()), rng.randint(1, 2))}
    text = ('[sweep]\nname = "fuzz"\nbase = "deepseek-v3"\n[fixed]\nbatch = 480\nsteps = 10\n[grid]\n'
            + "\n".join(f"{k} = [{', '.join(v)}]" for k, v in grid.items()) + "\n")
    return text.encode() if rng.random() < 0.3 else mutate_toml(rng, text)


def cluster_toml(rng):
    return mutate_toml(rng, _toml_table(rng.choice(_cluster_tables())))


def calib_json(rng):
    name = rng.choice(["default-h800", "trace-h800", "bench-h200"])
    return mutate_json(rng, json.loads(_text(f"hwmodels/data/{name}.json")))


@lru_cache(maxsize=None)
def _trace_base() -> dict:
    """The DeepSeek trace with only the events the importer reads (about 5,000 of 14,240)."""
    doc = json.loads(TRACE.read_text())
    keep = {"kernel", "gpu_memcpy", "gpu_memset", "user_annotation", "gpu_user_annotation", "cuda_runtime",
            "cuda_driver"}
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") in keep]
    return doc


TRACE_ODD = [None, -1, 0, 1e308, float("nan"), float("inf"), -1e9, "x", [], {}, 10**30, True, 1e-300, "12"]


def trace_json(rng):
    if TRACE is not None and rng.random() < 0.35:
        doc = _trace_base()
        events = [dict(e) for e in doc["traceEvents"]]
    else:
        doc = {"traceEvents": []}
        events = [{"ph": "X", "cat": rng.choice(["kernel", "kernel", "gpu_memcpy", "user_annotation",
                                                 "gpu_user_annotation", "cuda_runtime"]),
                   "name": rng.choice(["nvjet_gemm", "flash_fwd", "ncclKernel_AllReduce", "deep_gemm_fp8",
                                       "forward_chunk", "ProfilerStep#1", "x"]),
                   "pid": 0, "tid": rng.choice([7, 27, 29]), "ts": 1000 + 10 * i, "dur": rng.choice([5, 0, 30]),
                   "args": {"device": 0, "correlation": i, "External id": i}} for i in range(rng.randint(0, 40))]
    for _ in range(rng.choice([0, 1, 1, 2, 5])):
        if not events:
            break
        e = events[rng.randrange(len(events))]
        field = rng.choice(["ts", "dur", "tid", "pid", "name", "cat", "ph", "args", "args.device",
                            "args.correlation", "args.External id"])
        if field.startswith("args."):
            e["args"] = dict(e.get("args") or {}) if isinstance(e.get("args"), dict) else {}
            e["args"][field[5:]] = rng.choice(TRACE_ODD)
        elif rng.random() < 0.2:
            e.pop(field, None)
        else:
            e[field] = rng.choice(TRACE_ODD)
    if rng.random() < 0.05:
        events = [e for e in events if e.get("cat") != "kernel"]
    if rng.random() < 0.05:
        events.append(rng.choice([1, "x", None, []]))
    out = {k: v for k, v in doc.items() if k != "traceEvents"}
    out["traceEvents"] = events
    if rng.random() < 0.05:
        out["deviceProperties"] = rng.choice([None, "x", [1], [{"id": "0"}], {}])
    text = json.dumps(events if rng.random() < 0.05 else out).encode()
    r = rng.random()
    if r < 0.1:
        return gzip.compress(text)
    if r < 0.15:
        return text[: rng.randrange(len(text) + 1)]
    if r < 0.17:
        return gzip.compress(text)[:100]
    return text


def loads_file(rng) -> tuple[str, bytes]:
    """An expert-load file: CSV or NPY, valid or not; (suffix, bytes)."""
    experts = rng.choice([256, 256, 160, 64, 8, 1])
    layers = rng.choice([1, 2, 3, 58])
    a = np.random.default_rng(rng.randrange(2**32)).gamma(2.0, 1000.0, size=(layers, experts))
    kind = rng.random()
    if kind < 0.3:
        a[rng.randrange(layers), rng.randrange(experts)] = rng.choice([np.nan, np.inf, -1.0, -np.inf, 1e308, 0.0])
    elif kind < 0.35:
        a[rng.randrange(layers)] = 0.0
    elif kind < 0.4:
        a = a * 1e307
    suffix = rng.choice([".csv", ".csv", ".npy", ".npy", ".txt", ".npz"])
    if suffix in (".csv", ".txt"):
        header = rng.choice([None, "layer", "step,layer", "bad"])
        rows = [",".join(repr(float(x)) for x in row) for row in a]
        if header == "layer":
            rows = ["layer," + ",".join(f"e{i}" for i in range(experts))] + [f"{i},{r}" for i, r in enumerate(rows)]
        elif header == "step,layer":
            rows = (["step,layer," + ",".join(f"e{i}" for i in range(experts))]
                    + [f"{i % 2},{i},{r}" for i, r in enumerate(rows)])
        elif header == "bad":
            rows = [",".join(f"e{i}" for i in range(experts + rng.choice([0, 1, -1])))] + rows
        r = rng.random()
        if r < 0.1 and rows:
            rows[rng.randrange(len(rows))] += rng.choice([",1", ",x", ",", ",,"])
        elif r < 0.15:
            rows = rows[:1]
        elif r < 0.2:
            rows = [rng.choice(["", "\ufeff1,2", "nan", "inf,inf", "1e400,1", " , ", "1;2;3", "\x00"])]
        text = "\n".join(rows) + "\n"
        return suffix, text.encode() if rng.random() < 0.95 else text.encode("utf-16")
    buf = io.BytesIO()
    r = rng.random()
    if r < 0.12:
        np.save(buf, np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)  # a pickle inside
    elif r < 0.17:
        np.save(buf, a.astype(complex))
    elif r < 0.22:
        np.save(buf, a > 1000)
    elif r < 0.27:
        np.save(buf, np.zeros(3, dtype=[("x", "f8"), ("y", "i4")]))
    elif r < 0.32:
        np.save(buf, rng.choice([np.float64(3.0), np.zeros((0, 256)), np.ones((2, 2, 2, 2)), np.ones(256)]))
    elif r < 0.37:
        np.save(buf, a.astype(rng.choice([np.float16, np.uint64, np.int8, np.float32])))
    elif r < 0.4:
        np.save(buf, np.array(["a", "b"]))
    else:
        np.save(buf, np.asfortranarray(a) if rng.random() < 0.2 else a[None] if rng.random() < 0.3 else a)
    data = buf.getvalue()
    r = rng.random()
    if r < 0.06:
        data = data[: rng.randrange(len(data) + 1)]
    elif r < 0.08:
        data = data.replace(b"'shape': (", b"'shape': (1000000000000, ", 1)
    elif r < 0.1:
        data = b"\x93NUMPY\x09\x00" + data[8:]
    return suffix, data


def stage_layers(rng) -> str:
    n = rng.choice([1, 2, 4, 8, 16, 64])
    parts = [str(rng.choice([0, 1, 3, 4, 5, 8, 61, -1, 10**9])) for _ in range(n)]
    return rng.choice([",".join(parts), ",".join(parts) + ",", "a,b", "", "4;4", " 4, 4", "1e3,1"])


FILE_MAKERS = {"model_toml": ("m.toml", model_toml), "plan_toml": ("plan.toml", plan_toml),
               "sweep_toml": ("sweep.toml", sweep_toml), "cluster_toml": ("c.toml", cluster_toml),
               "calib_json": ("calib.json", calib_json), "trace": ("trace.json", trace_json)}


def _plausible(rng, key: str, files: dict) -> str:
    value = rng.choice(PLAUSIBLE[key])
    if not value.startswith("@"):
        return value
    what = value[1:]
    if what == "hf_json":
        files["config.json"] = hf_json(rng)
        return "config.json"
    if what == "loads":
        suffix, data = loads_file(rng)
        files["loads" + suffix] = data
        return "file:loads" + suffix
    if what == "stage_layers":
        return stage_layers(rng)
    name, maker = FILE_MAKERS[what]
    files[name] = maker(rng)
    return name


def option_value(rng, cmd: str, param: dict, files: dict) -> str:
    key = param["name"].rstrip("_")
    if key == "tokens" and cmd in ("routing", "collective"):
        return rng.choice(["4096", "0", "1", "-1", "1000000000", "abc", "1e400", "256"])
    if key == "plan":
        if rng.random() < 0.6:
            files["plan.toml"] = plan_toml(rng)
            return "plan.toml"
        return rng.choice(["deepseek-v3", "deepseek-v3-full", "missing.toml", "nope"])
    if cmd in HEAVY and param["opts"][0] in HEAVY[cmd] and (rng.random() < 0.9 or cmd in ALWAYS_NARROWED):
        return rng.choice(HEAVY[cmd][param["opts"][0]])
    if rng.random() < float(os.environ.get("GPUHOURS_FUZZ_PLAUSIBLE", PLAUSIBLE_SHARE)):
        if key in PLAUSIBLE:
            return _plausible(rng, key, files)
        if key in PATH_OPTIONS:
            return rng.choice(PATH_OPTIONS[key])
    typ = param["type"]
    if typ == "int":
        return rng.choice(ODD_INT)
    if typ == "float":
        return rng.choice(ODD_FLOAT)
    if typ in ("Path", "PosixPath"):
        return rng.choice(ODD_PATH)
    return rng.choice(ODD_STR)


def make_input(rng: random.Random, commands: dict[str, list[dict]]) -> dict:
    names = sorted(commands)
    cmd = rng.choices(names, weights=[WEIGHTS.get(n, 4) for n in names])[0]
    files: dict[str, bytes] = {"f.txt": b"not a folder\n"}
    args: list[str] = cmd.split()
    params = commands[cmd]
    for p in params:
        if p["argument"]:
            args.append(option_value(rng, cmd, p, files) if rng.random() < 0.97 else "")
    options = [p for p in params if not p["argument"]]
    chosen = rng.sample(options, min(len(options), rng.choice([0, 1, 2, 2, 3, 3, 4, 5, 6])))
    for p in options:  # required options almost always
        if p["required"] and p not in chosen and rng.random() < 0.95:
            chosen.append(p)
    for opt, _values in HEAVY.get(cmd, {}).items():  # keep heavy commands near their fast end
        p = next((q for q in options if opt in q["opts"]), None)
        if p is not None and p not in chosen and (rng.random() < 0.9 or cmd in ALWAYS_NARROWED):
            chosen.append(p)
    for p in chosen:
        if p["flag"]:
            args.append(rng.choice(p["secondary"]) if p["secondary"] and rng.random() < 0.4 else p["opts"][0])
            continue
        args += [rng.choice(p["opts"]), option_value(rng, cmd, p, files)]
    if rng.random() < 0.01:
        args.insert(rng.randrange(len(args) + 1), rng.choice(["--unknown", "extra", "-x", "--json=1"]))
    if rng.random() < 0.005:
        args = [rng.choice(["nocommand", "calibrate", "", "--json"])]
    return {"args": args, "files": files}
