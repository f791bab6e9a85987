"""Built-in jackfield plugins. Each module is registered under the `jackfield` entry-point group."""
