"""Built-in jackfield plugins. Each module is registered under the `jackfield` entry-point group.

They are released with the core, so they support exactly its plugin API.
"""
from jackfield.sdk import API_VERSION

JACKFIELD_API = f"=={API_VERSION}"
