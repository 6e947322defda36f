"""Run every benchmark in ``bench/``, each in its own subprocess, and print their JSON lines.

Benchmarks whose script is missing are skipped. The ingest benchmark starts
DCMTK ``storescp``, which has no option to choose its listening address, so it
runs in a private network namespace that holds only a loopback interface
(``unshare -n``, root only). A benchmark that fails prints a JSON line with its
``error`` and the others still run; the exit status is then 1.

``--update-docs`` rewrites the results table of ``docs/benchmarks.md`` between
its two marker lines, with the machine (CPU model, cores, memory) and the date
of each row. Rows of benchmarks left out by ``--only`` stay as they were.

Run from the repository root: ``nice -n 10 python bench/run_all.py [--update-docs]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN_MARKER = "<!-- run_all: results begin -->"
END_MARKER = "<!-- run_all: results end -->"
PRIVATE_NETWORK = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


@dataclass(frozen=True)
class Benchmark:
    """One script in ``bench/`` and how to start it."""

    name: str
    script: str
    arguments: tuple[str, ...] = ()
    private_network: bool = False

    @property
    def path(self) -> Path:
        return ROOT / "bench" / self.script


BENCHMARKS = (
    Benchmark("ingest", "ingest.py", private_network=True),
    Benchmark("load_study", "load_study.py"),
    # The reference path takes about a minute per lesion on a 2-core CPU, so 5 of them.
    Benchmark("localize", "localize.py", ("--device", "cpu", "--lesions", "50", "--reference-lesions", "5")),
    Benchmark("e2e", "e2e.py"),
)


def run_benchmark(benchmark: Benchmark) -> dict:
    """Run one benchmark and return its JSON line as a dict, or a dict with ``error``."""
    command = [sys.executable, str(benchmark.path), *benchmark.arguments]
    if benchmark.private_network:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return {"benchmark": benchmark.name, "error": "needs root and unshare for a private network namespace"}
        command = [*PRIVATE_NETWORK, *command]
    completed = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        return {
            "benchmark": benchmark.name,
            "error": f"exited with status {completed.returncode}: {tail[0]}",
        }
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"benchmark": benchmark.name, "error": f"last output line is not JSON: {lines[-1][:200]}"}
    result.setdefault("benchmark", benchmark.name)
    return result


def machine_description() -> str:
    """Return the CPU model, logical core count and memory of this machine, from /proc."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown memory"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB memory"
                break
    return f"{model}, {os.cpu_count()} logical cores, {memory}"


def results_table(previous: str, results: list[dict], machine: str, date: str) -> str:
    """Return the Markdown text that goes between the markers of docs/benchmarks.md.

    Rows of benchmarks that did not run this time are kept from ``previous``.
    """
    rows = {}
    for line in previous.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("benchmark", "---"):
            rows[cells[0]] = line
    for result in results:
        figures = ", ".join(
            f"{key} {json.dumps(value)}" for key, value in result.items() if key != "benchmark"
        )
        rows[result["benchmark"]] = f"| {result['benchmark']} | {date} | {figures.replace('|', '/')} |"

    lines = [
        f"Machine of the latest run: {machine}. Each row is the JSON line of one benchmark "
        "with the load average (1 min) before and after it, which shows other jobs on the machine.",
        "",
        "| benchmark | run | figures |",
        "|---|---|---|",
    ]
    order = [benchmark.name for benchmark in BENCHMARKS]
    known = [name for name in order if name in rows]
    unknown = sorted(name for name in rows if name not in order)
    lines += [rows[name] for name in known + unknown]
    return "\n".join(lines)


def update_docs(results: list[dict]) -> None:
    """Rewrite the results table between the markers of docs/benchmarks.md."""
    text = DOCS.read_text()
    begin = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER)
    if begin < 0 or end < begin:
        raise SystemExit(f"{DOCS} lacks the lines {BEGIN_MARKER} and {END_MARKER}; add both to mark the table")
    previous = text[begin + len(BEGIN_MARKER) : end]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = results_table(previous, results, machine_description(), date)
    DOCS.write_text(text[: begin + len(BEGIN_MARKER)] + "\n" + table + "\n" + text[end:])


def main() -> int:
    names = [benchmark.name for benchmark in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=names, help="Run only this benchmark (repeatable).")
    parser.add_argument("--update-docs", action="store_true", help=f"Rewrite the results table in {DOCS.name}.")
    arguments = parser.parse_args()

    selected = [b for b in BENCHMARKS if not arguments.only or b.name in arguments.only]
    results = []
    for benchmark in selected:
        if not benchmark.path.exists():
            print(f"skipping {benchmark.name}: {benchmark.path.relative_to(ROOT)} not found", file=sys.stderr)
            continue
        print(f"running {benchmark.name}", file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        result = run_benchmark(benchmark)
        result.setdefault("load_average_1m", [round(load_before, 2), round(os.getloadavg()[0], 2)])
        print(json.dumps(result), flush=True)
        results.append(result)

    if arguments.update_docs and results:
        update_docs(results)
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
