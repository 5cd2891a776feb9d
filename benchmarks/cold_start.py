"""Cold start: the import time of each function's entry module in a fresh interpreter, and the
third-party packages it loads, next to the floor of importing just those third-party modules and
against a variant that imports every vendor SDK eagerly first."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass

from benchmarks import ROOT
from benchmarks.common import Table, ratio
from tools.vendor import function_folders

# Every function appwrite.json declares; the loader imports each from the folder of its name.
FUNCTION_IDS = tuple(folder.name for folder in function_folders(ROOT))
# The SDKs a function set could use; the baseline loads all of them before the entry module.
EAGER_IMPORTS = (
    "anthropic",
    "stripe",
    "appwrite.client",
    "appwrite.services.tables_db",
    "pydantic",
)
# Only the chat calls the model: every other function must never load the Anthropic SDK.
WITHOUT_ANTHROPIC = tuple(function_id for function_id in FUNCTION_IDS if function_id != "chat")

# Runs in a fresh interpreter: import the entry module as open-runtimes does (through the local
# loader) and report the time it took and the top-level packages it added (the project's own
# vendored ``metering`` is not third-party).
# With ``load`` false it imports only ``eager``: the floor, when that is the list of third-party
# modules the entry module loaded.
_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from localruntime.loader import load_function
before = list(sys.modules)
known = set(before)
started = time.perf_counter()
for name in {eager!r}:
    try:
        __import__(name)
    except Exception:  # a module its package imports under conditions of its own
        pass
if {load!r}:
    load_function({function_id!r})
elapsed = time.perf_counter() - started
def third_party(name):
    top = name.split(".")[0]
    return (
        top not in sys.stdlib_module_names and not top.startswith(("fn_", "_"))
        and top != "metering" and getattr(sys.modules.get(top), "__file__", None)
    )
added = [name for name in list(sys.modules) if name not in known and third_party(name)]
packages = sorted({{name.split(".")[0] for name in added}})
print(json.dumps({{"seconds": elapsed, "packages": packages, "modules": added}}))
"""


@dataclass(frozen=True)
class Sample:
    seconds: float
    packages: tuple[str, ...]
    modules: tuple[str, ...] = ()  # every third-party module added, in import order


@dataclass(frozen=True)
class ColdStart:
    function_id: str
    ours_seconds: float  # median
    eager_seconds: float  # median
    floor_seconds: float  # median: the same third-party modules imported alone
    packages: tuple[str, ...]
    eager_packages: tuple[str, ...]

    @property
    def imports_anthropic(self) -> bool:
        return "anthropic" in self.packages


def sample(function_id: str, eager: tuple[str, ...] = (), *, load: bool = True) -> Sample:
    code = _CHILD.format(root=str(ROOT), eager=eager, function_id=function_id, load=load)
    completed = subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True, check=True, cwd=ROOT
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return Sample(
        seconds=float(report["seconds"]),
        packages=tuple(report["packages"]),
        modules=tuple(report["modules"]),
    )


def measure(runs: int = 5, function_ids: tuple[str, ...] = FUNCTION_IDS) -> list[ColdStart]:
    results: list[ColdStart] = []
    for function_id in function_ids:
        ours: list[Sample] = []
        eager: list[Sample] = []
        floor: list[Sample] = []
        # Interleaved, so that a burst of load on the machine hits every variant alike.
        for _ in range(runs):
            ours.append(sample(function_id))
            floor.append(sample(function_id, ours[-1].modules, load=False))
            eager.append(sample(function_id, EAGER_IMPORTS))
        results.append(
            ColdStart(
                function_id=function_id,
                ours_seconds=statistics.median(s.seconds for s in ours),
                eager_seconds=statistics.median(s.seconds for s in eager),
                floor_seconds=statistics.median(s.seconds for s in floor),
                packages=ours[-1].packages,
                eager_packages=eager[-1].packages,
            )
        )
    return results


def render(results: list[ColdStart], runs: int) -> str:
    table = Table(
        [
            "function",
            "ours: import ms",
            "floor: its third-party imports, ms",
            "ours / floor",
            "eager SDKs: import ms",
            "eager / ours",
            "imports anthropic",
            "vendor SDKs loaded (ours)",
        ]
    )
    for result in results:
        vendors = [p for p in result.packages if p in ("anthropic", "stripe", "appwrite")]
        table.add(
            result.function_id,
            round(result.ours_seconds * 1000, 1),
            round(result.floor_seconds * 1000, 1),
            ratio(result.ours_seconds, result.floor_seconds) if result.packages else "-",
            round(result.eager_seconds * 1000, 1),
            ratio(result.eager_seconds, result.ours_seconds),
            "yes" if result.imports_anthropic else "no",
            ", ".join(vendors) or "none",
        )
    packages = Table(["function", "third-party packages loaded by the entry module"])
    for result in results:
        packages.add(result.function_id, ", ".join(result.packages) or "none")
    heading = (
        f"Median of {runs} fresh interpreters per variant. Floor: the third-party modules the"
        " entry module loaded, imported alone in the same order (what no code of ours can go"
        " below). Eager: `import " + ", ".join(EAGER_IMPORTS) + "` before the entry module."
    )
    offenders = [r.function_id for r in results if r.imports_anthropic]
    offenders = [name for name in offenders if name in WITHOUT_ANTHROPIC]
    rule = (
        f"Loading `anthropic` where it is not used: {', '.join(offenders)}."
        if offenders
        else "None of " + ", ".join(WITHOUT_ANTHROPIC) + " loads `anthropic`."
    )
    return "\n\n".join([heading, table.render(), rule, packages.render()])


def run(quick: bool) -> str:
    runs = 1 if quick else 5
    return render(measure(runs), runs)
