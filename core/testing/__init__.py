"""jackfield.testing: the conformance kit that certifies a component of any kind.

A component passes the kit when no check of its kind fails on the device asked for. A check is
one named behaviour ("extend then decode match the reference: GQA 4:1, head_dim 64, page 4"); a
failure report names the behaviour and says what went wrong; a check that does not apply (an
undeclared device or feature) is skipped with the reason. `jackfield plugin check NAME` runs it
from the command line; plugin authors call `certify(cls)` from their own tests, or parametrize a
test over the checks with the pytest plugin (`jackfield.testing.pytest_plugin`).
"""
from jackfield.testing.kit import (Check, CheckResult, KitFailure, KitReport, KitTarget, certify, expect, run_check,
                                   run_checks, suite_checks)

__all__ = ["Check", "CheckResult", "KitFailure", "KitReport", "KitTarget", "certify", "expect", "run_check", "run_checks",
           "suite_checks"]
