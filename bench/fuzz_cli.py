"""Fuzz every `gpuhours` command line and input file; count tracebacks, hangs, non-finite output, half-written files.

Run: .venv/bin/python bench/fuzz_cli.py [--n 10000] [--seed 0] [--workers 2] [--timeout 30]
                                        [--subprocess-every 50] [--out /tmp/gpuhours-fuzz]

Inputs come from bench/fuzz_inputs.py: a command picked from the typer app (every command and sub-command), some
of its options with odd values (0, -1, huge, inf, nan, 1e400, non-numbers, empty strings, unknown choices) or
plausible ones (valid alone, extreme together), and the files they name (model TOML, HF config.json, plan, sweep
and cluster TOML, calibration JSON, Chrome/Kineto traces, expert-load CSV/NPY including pickled object arrays).
Each input runs in a fresh temporary folder, in-process (typer's CliRunner in a long-lived worker process: a
subprocess costs about a second of imports per input) with a timeout in CPU seconds (SIGPROF: the machine is
shared, so wall time says little; a wall-clock backstop kills a worker stuck in C code at 4x it); a worker that
timed out is replaced. Every `--subprocess-every`-th input runs as a real `gpuhours` subprocess instead. Workers
run under a 6 GiB address-space limit, so a runaway allocation is a MemoryError (a traceback), not the OOM killer.

Classes: ok (exit 0; no NaN/inf in the text; in-process, every float --json would print is finite and no
time/cost/size figure is negative), clean_error (exit 2, exactly one line "error: ..."), vague_error (a clean
error naming no field or option), typer_box (a multi-line usage message), messy_error (exit 2, other output),
traceback, hang, crash (the worker died), nonfinite, negative, half_written (a new file left after a failure, or
a `.partial` file left at all), other_exit. Writes OUT/summary.json (counts, rate, command line) and one
reproducer per distinct signature under OUT/repro/<signature>/ (the files, cmd.sh, result.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_inputs import commands_of, make_input  # noqa: E402

GPUHOURS = Path(sys.executable).with_name("gpuhours")
# The machine is shared (2 cores, several users): the timeout counts CPU seconds of the run (SIGPROF in-process,
# the child's rusage for subprocesses); wall time is only a backstop at WALL_FACTOR times it.
WALL_FACTOR = 4
BAD_CLASSES = ("traceback", "hang", "crash", "nonfinite", "negative", "half_written")
# a figure printed as nan/inf; not a path the user named ("wrote inf/accuracy.md")
NONFINITE_TEXT = re.compile(r"(?i)(?<![\w./-])[-+]?(nan|inf|infinity)[kmgtp%x]?(?![\w/.-])")
NEGATIVE_TEXT = re.compile(r"(?<![\w.])-\d[\d,.]*\s*(s|ms|us|days|hours|GPU-hours|M GPU-hours)\b|\$-|-\$")
# JSON keys holding a time, cost, size or count that can never be negative (by name)
TIME_COST_KEY = re.compile(r"(^|_)(time|s|ms|us|seconds|days|hours|gpu_hours|cost|usd|price|makespan|span|bubble|"
                           r"busy|bytes|gib|memory)(_|$)")
SIGNED_KEY = re.compile(r"error|delta|diff|change|saving|gain|vs_|pct|percent|relative|slope|offset|sensitivity|"
                        r"minus|faster|slower")


class Hang(BaseException):
    """Raised by SIGPROF in the worker (a BaseException: no `except Exception` swallows it)."""


def _figure_issues(obj, path=()) -> list[str]:
    """Non-finite floats anywhere, negative figures under time/cost keys: 'nonfinite: a.b' / 'negative: a.b'."""
    out = []
    if isinstance(obj, float) or (hasattr(obj, "item") and not hasattr(obj, "__len__")):
        try:
            v = float(obj)
        except (TypeError, ValueError):
            return out
        key = str(path[-1]).lower() if path and not isinstance(path[-1], int) else \
            next((str(p).lower() for p in reversed(path) if not isinstance(p, int)), "")
        if not math.isfinite(v):
            out.append(f"nonfinite: {'.'.join(map(str, path))}")
        elif v < 0 and TIME_COST_KEY.search(key) and not SIGNED_KEY.search(".".join(map(str, path)).lower()):
            out.append(f"negative: {'.'.join(map(str, path))}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += _figure_issues(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += _figure_issues(v, path + (i,))
    return out


def classify(rc, out: str, err: str, exc: str | None, issues: list[str], args: list[str], new_files: list[str],
             partial_files: list[str]) -> tuple[str, str]:
    """(class, detail) of one run."""
    text = out + "\n" + err
    if exc or "Traceback (most recent call last)" in text:
        return "traceback", exc or text[-1500:]
    if partial_files:
        return "half_written", ", ".join(partial_files)
    if rc == 0:
        for kind in ("nonfinite", "negative"):
            hit = [i for i in issues if i.startswith(kind)]
            if hit:
                return kind, "; ".join(sorted(set(hit))[:5])
        m = NONFINITE_TEXT.search(out)
        if m:
            return "nonfinite", out[max(0, m.start() - 80): m.end() + 40]
        m = NEGATIVE_TEXT.search(out)
        if m:
            return "negative", out[max(0, m.start() - 80): m.end() + 40]
        return "ok", ""
    if new_files:
        return "half_written", ", ".join(new_files)
    if rc == 2:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) == 1 and lines[0].startswith("error:"):
            names = {a.lstrip("-").split("=")[0] for a in args if a.startswith("-")}
            msg = lines[0][6:].lower()
            named = any(n and (n in msg or n.replace("-", "_") in msg) for n in names) or "'" in msg or \
                re.search(r"[\w\])'\"]+ ?(:|=| must| is | has | needs | allowed| not )", msg)
            return ("clean_error" if named else "vague_error"), lines[0]
        if "Usage:" in text:
            return "typer_box", text[-600:]
        return "messy_error", text[-600:]
    return "other_exit", f"exit {rc}: {text[-600:]}"


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ worker
def worker_main(conn, timeout: float) -> None:
    import resource
    import signal
    import subprocess
    import traceback

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from typer.testing import CliRunner

    import gpuhours.cli_support as cs
    from gpuhours.cli import app

    captured: list[str] = []
    original = cs._finite
    depth = [0]

    def spy(obj):  # sees what --json is about to print before non-finite floats become null
        if depth[0] == 0:
            captured.extend(_figure_issues(obj))
        depth[0] += 1
        try:
            return original(obj)
        finally:
            depth[0] -= 1

    cs._finite = spy

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGPROF, alarm)
    home = os.getcwd()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        if job is None:
            return
        folder = Path(tempfile.mkdtemp(prefix="gpuhours-fuzz-"))
        for name, data in job["files"].items():
            (folder / name).write_bytes(data)
        before = _snapshot(folder)
        captured.clear()
        rc, out, err, exc, hang = None, "", "", None, False
        start, cpu_start = time.perf_counter(), time.process_time()
        os.chdir(folder)
        try:
            if job["subprocess"]:
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                try:
                    p = subprocess.run([str(GPUHOURS), *job["args"]], capture_output=True, text=True,
                                       timeout=WALL_FACTOR * timeout, errors="replace")
                    rc, out, err = p.returncode, p.stdout, p.stderr
                    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime > timeout:
                        hang = True
                    if job["args"] and "--json" in job["args"] and rc == 0:
                        try:
                            captured.extend(_figure_issues(json.loads(out)))
                        except ValueError:
                            pass
                except subprocess.TimeoutExpired:
                    hang = True
            else:
                signal.setitimer(signal.ITIMER_PROF, timeout)  # CPU seconds of this process (all threads)
                try:
                    r = CliRunner().invoke(app, job["args"])
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                rc, out, err = r.exit_code, r.stdout, r.stderr
                if r.exception is not None and not isinstance(r.exception, SystemExit):
                    tb = traceback.extract_tb(r.exc_info[2])
                    ours = [f for f in tb if "/site-packages/" not in f.filename] or tb
                    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
                    exc = f"{type(r.exception).__name__} at {where}: {str(r.exception)[:300]}"
        except Hang:
            hang = True
        except MemoryError:
            exc = "MemoryError outside the runner"
        finally:
            os.chdir(home)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        after = _snapshot(folder) if not hang else before
        new = sorted(after - before)
        partial = [f for f in after if ".partial" in f]
        if hang:
            cls, detail = "hang", f"over {timeout:g} s"
        else:
            cls, detail = classify(rc, out or "", err or "", exc, captured, job["args"],
                                   new if rc not in (0, None) else [], partial)
        shutil.rmtree(folder, ignore_errors=True)
        conn.send({"i": job["i"], "cls": cls, "detail": detail, "rc": rc, "s": elapsed, "cpu_s": cpu,
                   "out": (out or "")[-2000:], "err": (err or "")[-2000:]})
        if hang:
            return  # a fresh worker after a hang: this one's state is suspect


# ------------------------------------------------------------------------------------------------ driver
def signature(job: dict, res: dict) -> str:
    cmd = " ".join(a for a in job["args"][:2] if not a.startswith("-"))
    detail = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", res["detail"])
    detail = re.sub(r"'[^']*'|\"[^\"]*\"", "'S'", detail)[:160]
    if res["cls"] in ("clean_error", "ok"):
        return f"{res['cls']}|{cmd}"
    return f"{res['cls']}|{cmd}|{detail}"


def write_repro(root: Path, sig: str, job: dict, res: dict) -> str:
    h = hashlib.sha1(sig.encode()).hexdigest()[:10]
    d = root / "repro" / f"{res['cls']}-{h}"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in job["files"].items():
        (d / name).write_bytes(data)
    (d / "cmd.sh").write_text(f"cd \"$(dirname \"$0\")\" && {GPUHOURS} {shlex.join(job['args'])}\n")
    (d / "result.json").write_text(json.dumps({"signature": sig, "args": job["args"], **res}, indent=1))
    return str(d)


def _load_repro(folder: Path) -> dict:
    """The job a reproducer folder holds: its command line and its input files."""
    args = json.loads((folder / "result.json").read_text())["args"]
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in ("cmd.sh", "result.json")}
    return {"args": args, "files": files}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--subprocess-every", type=int, default=50, help="every k-th input as a real subprocess (0: none)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpuhours-fuzz"))
    ap.add_argument("--plausible", type=float, default=None,
                    help="share of option values drawn from the plausible tables (default fuzz_inputs.PLAUSIBLE_SHARE)")
    ap.add_argument("--replay", type=Path, default=None,
                    help="re-run every reproducer folder under this repro/ folder of an earlier run instead")
    a = ap.parse_args(argv)
    if a.plausible is not None:
        os.environ["GPUHOURS_FUZZ_PLAUSIBLE"] = str(a.plausible)  # the generator runs here, in the driver
    if a.out.exists():
        shutil.rmtree(a.out / "repro", ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    from gpuhours.cli import app

    commands = commands_of(app)
    replay = [_load_repro(d) for d in sorted(a.replay.glob("*/")) if (d / "result.json").exists()] \
        if a.replay else []
    if a.replay:
        a.n = len(replay)
    ctx = mp.get_context("spawn")
    workers: dict = {}

    def start_worker(k):
        parent, child = ctx.Pipe()
        # not daemonic: a command's own process pool (sweep, plan --executor process) needs children
        p = ctx.Process(target=worker_main, args=(child, a.timeout), daemon=False)
        p.start()
        workers[k] = {"proc": p, "conn": parent, "job": None, "since": 0.0}

    for k in range(a.workers):
        start_worker(k)
    counts: dict[str, int] = {}
    by_command: dict[str, dict[str, int]] = {}
    sigs: dict[str, dict] = {}
    in_process_s, sub_s, n_sub, done, next_i = 0.0, 0.0, 0, 0, 0
    cpu_by_class: dict[str, float] = {}
    t0 = time.perf_counter()

    def record(job, res):
        nonlocal done, in_process_s, sub_s, n_sub
        done += 1
        counts[res["cls"]] = counts.get(res["cls"], 0) + 1
        cmd = " ".join(job["args"][:2]) if job["args"][:1] == ["calibrate"] else (job["args"] or [""])[0]
        by_command.setdefault(cmd, {}).setdefault(res["cls"], 0)
        by_command[cmd][res["cls"]] += 1
        if job["subprocess"]:
            sub_s, n_sub = sub_s + res["s"], n_sub + 1
        else:
            in_process_s += res["s"]
            cpu_by_class[res["cls"]] = cpu_by_class.get(res["cls"], 0.0) + res.get("cpu_s", 0.0)
        sig = signature(job, res)
        if sig not in sigs:
            sigs[sig] = {"class": res["cls"], "count": 0, "example": write_repro(a.out, sig, job, res),
                         "args": job["args"], "detail": res["detail"][:400]}
        sigs[sig]["count"] += 1

    def summary(final=False):
        wall = time.perf_counter() - t0
        n_in = done - n_sub
        s = {"command": "bench/fuzz_cli.py " + " ".join(sys.argv[1:] if argv is None else argv), "done": done,
             "n": a.n, "final": final, "wall_s": round(wall, 1), "inputs_per_s": round(done / wall, 2) if wall else 0,
             "in_process_mean_s": round(in_process_s / n_in, 3) if n_in else None,
             "subprocess_mean_s": round(sub_s / n_sub, 3) if n_sub else None, "subprocess_inputs": n_sub,
             "in_process_cpu_s_by_class": {k: round(v, 1) for k, v in sorted(cpu_by_class.items())},
             "counts": dict(sorted(counts.items())), "bad": {c: counts.get(c, 0) for c in BAD_CLASSES},
             "by_command": by_command,
             "signatures": {k: v for k, v in sorted(sigs.items(), key=lambda kv: kv[1]["class"])
                            if v["class"] not in ("ok", "clean_error")}}
        (a.out / "summary.json").write_text(json.dumps(s, indent=1))
        return s

    while done < a.n:
        for k, w in workers.items():
            if w["job"] is None and next_i < a.n:
                if replay:
                    job = replay[next_i] | {"i": next_i, "subprocess": False}
                else:
                    job = make_input(random.Random(f"{a.seed}:{next_i}"), commands) | {
                        "i": next_i, "subprocess": bool(a.subprocess_every) and next_i % a.subprocess_every == 0}
                next_i += 1
                w["job"], w["since"] = job, time.perf_counter()
                w["conn"].send(job)
        ready = wait([w["conn"] for w in workers.values() if w["job"] is not None], timeout=1.0)
        for k, w in list(workers.items()):
            job = w["job"]
            if job is None:
                continue
            res = None
            if w["conn"] in ready:
                try:
                    res = w["conn"].recv()
                except (EOFError, OSError):
                    res = {"cls": "crash", "detail": f"worker died (exit {w['proc'].exitcode})", "rc": None,
                           "s": time.perf_counter() - w["since"], "out": "", "err": ""}
            elif time.perf_counter() - w["since"] > WALL_FACTOR * a.timeout + 30:  # the alarm did not fire
                res = {"cls": "hang", "detail": f"over {WALL_FACTOR * a.timeout + 30:g} s wall (worker killed)",
                       "rc": None,
                       "s": time.perf_counter() - w["since"], "out": "", "err": ""}
            if res is None:
                continue
            record(job, res)
            w["job"] = None
            if res["cls"] in ("hang", "crash"):
                w["proc"].kill()
                w["proc"].join()
                start_worker(k)
            if done % 100 == 0:
                s = summary()
                print(f"{done}/{a.n} {s['inputs_per_s']}/s bad {s['bad']} counts {s['counts']}", flush=True)
    for w in workers.values():
        w["conn"].send(None)
    for w in workers.values():
        w["proc"].join(timeout=10)
        if w["proc"].is_alive():
            w["proc"].kill()
    s = summary(final=True)
    print(json.dumps({k: s[k] for k in ("command", "done", "wall_s", "inputs_per_s", "in_process_mean_s",
                                        "subprocess_mean_s", "subprocess_inputs", "counts", "bad")}, indent=1))
    print(f"distinct non-ok signatures: {len(s['signatures'])}; summary {a.out / 'summary.json'}")
    return 1 if any(s["bad"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
