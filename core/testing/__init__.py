"""jackfield.testing: the conformance kit that certifies a component of any kind.

A component passes the kit when every check of its kind's suite passes on the device asked for. A
check is one named behaviour ("decode matches torch_native at GQA 4:1, page 16"); a failure report
names the behaviour and says what went wrong. `jackfield plugin check NAME` runs it from the
command line; plugin authors call `certify` from their own tests.
"""
from jackfield.testing.kit import (Check, CheckResult, KitFailure, KitReport, KitTarget, certify, expect, run_checks,
                                   suite_checks)

__all__ = ["Check", "CheckResult", "KitFailure", "KitReport", "KitTarget", "certify", "expect", "run_checks",
           "suite_checks"]
