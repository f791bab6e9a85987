"""`python -m jackfield.cli`: the same as the `jackfield` command."""
import sys

from jackfield.cli import main

sys.exit(main())
