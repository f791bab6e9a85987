"""The kit's machinery: targets, checks, the runner and its report.

A suite is a module `jackfield.testing.suites.<kind>` with one function, `checks(target) ->
list[Check]`; the list may depend on the target (the dtypes and devices it declares, whether it
claims CUDA-graph support). Every kind also runs the interface checks of `suites/common.py` first.
A check passes when its `run` returns; it fails with the message of the `KitFailure` it raises
(any other exception fails it too, reported with its type). `requires` gives a reason to skip.
"""
from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass
from typing import Callable


class KitFailure(AssertionError):
    """Raised by a check: the component does not behave as its kind requires. The message says how."""


def expect(condition: bool, message: str) -> None:
    """Fail the running check with `message` unless `condition` holds."""
    if not condition:
        raise KitFailure(message)


@dataclass(frozen=True)
class KitTarget:
    """The component class under test, its kind, and the device its checks run on."""

    kind: str
    cls: type
    device: str = "cpu"

    @property
    def name(self) -> str:
        return getattr(self.cls, "name", "") or self.cls.__name__


def _no_requirement(target: KitTarget) -> str | None:
    return None


@dataclass(frozen=True)
class Check:
    """One behaviour of a kind, checked on a target."""

    behaviour: str
    run: Callable[[KitTarget], None]
    requires: Callable[[KitTarget], str | None] = _no_requirement
    """Returns why this check does not apply to the target (it is then skipped), or None."""


@dataclass(frozen=True)
class CheckResult:
    behaviour: str
    outcome: str  # "passed" | "failed" | "skipped"
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class KitReport:
    target: KitTarget
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.outcome != "failed" for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "failed"]

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    def format(self) -> str:
        """The report `jackfield plugin check` prints: one line per check, failures with detail."""
        t = self.target
        lines = [f"{t.kind} component '{t.name}' ({t.cls.__module__}.{t.cls.__qualname__}) on {t.device}"]
        for r in self.results:
            mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r.outcome]
            slow = r.outcome == "passed" and r.seconds >= 0.1
            lines.append(f"  {mark}  {r.behaviour}" + (f"  ({r.seconds:.1f} s)" if slow else ""))
            if r.detail and r.outcome != "passed":
                lines += [f"        {line}" for line in r.detail.splitlines()]
        verdict = "certified" if self.ok else "NOT certified"
        lines.append(f"{self.count('passed')} passed, {self.count('failed')} failed, "
                     f"{self.count('skipped')} skipped: {verdict}")
        return "\n".join(lines)


def suite_checks(target: KitTarget) -> list[Check]:
    """The interface checks every kind shares, then the kind's own suite (when it has one)."""
    from jackfield.testing.suites import common

    checks = common.checks(target)
    try:
        suite = importlib.import_module(f"jackfield.testing.suites.{target.kind}")
    except ModuleNotFoundError as exc:
        if exc.name != f"jackfield.testing.suites.{target.kind}":
            raise
        return checks
    if common.interface_ok(target):  # behaviour checks need a class that can be constructed
        checks += suite.checks(target)
    return checks


def run_check(check: Check, target: KitTarget) -> CheckResult:
    """Run one check: passed, failed (with the failure's message) or skipped (with the reason)."""
    try:
        why = check.requires(target)
    except Exception as exc:
        return CheckResult(check.behaviour, "failed", f"its precondition raised {type(exc).__name__}: {exc}")
    if why:
        return CheckResult(check.behaviour, "skipped", why)
    t0 = time.perf_counter()
    try:
        check.run(target)
    except KitFailure as exc:
        return CheckResult(check.behaviour, "failed", str(exc), time.perf_counter() - t0)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"raised {type(exc).__name__}: {exc}\n(at {where.filename}:{where.lineno} in {where.name})"
        return CheckResult(check.behaviour, "failed", detail, time.perf_counter() - t0)
    return CheckResult(check.behaviour, "passed", "", time.perf_counter() - t0)


def run_checks(target: KitTarget, checks: list[Check] | None = None) -> KitReport:
    """Run `checks` (default: the target's whole suite) and collect the report."""
    checks = suite_checks(target) if checks is None else checks
    return KitReport(target, tuple(run_check(c, target) for c in checks))


def certify(cls: type, device: str = "cpu", kind: str | None = None) -> KitReport:
    """Run the kit on a component class (its kind is read from the class unless given)."""
    return run_checks(KitTarget(kind or cls.kind, cls, device))
