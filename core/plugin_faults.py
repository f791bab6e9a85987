"""Which plugin an exception came from, so errors name it.

A plugin is a module registered with the plugin manager (entry point or in-process). The plugin at
fault is the one owning the innermost traceback frame that runs in its module or a submodule of it:
"RuntimeError: boom" becomes "plugin 'faulty' failed: RuntimeError: boom". Built-in plugins are
plugins too (`jackfield_plugins.*`). Used for startup failures (scheduler_process.py), failed
forwards (scheduler) and unexpected exceptions in HTTP handlers (errors.py).
"""
from __future__ import annotations

import types


def plugin_modules(pm) -> dict[str, str]:
    """module name -> plugin name, for every plugin registered with `pm`."""
    out = {}
    if pm is None:
        return out
    for name, plugin in pm.list_name_plugin():
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        if name is not None and module:
            out[module] = name
    return out


def _frames(exc: BaseException):
    tb = exc.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def blame(exc: BaseException, pm) -> str | None:
    """The name of the plugin whose code raised `exc` (innermost frame wins), or None."""
    modules = plugin_modules(pm)
    if not modules:
        return None
    found = None
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:  # the exception and what caused it
        seen.add(id(chain))
        for frame in _frames(chain):
            name = frame.f_globals.get("__name__", "")
            for module, plugin in modules.items():
                if name == module or name.startswith(module + "."):
                    found = plugin
        if found is not None:
            return found
        chain = chain.__cause__ or chain.__context__
    return None


def describe(exc: BaseException, pm) -> str:
    """`Type: message`, prefixed with the plugin at fault when there is one."""
    text = f"{type(exc).__name__}: {exc}"
    plugin = blame(exc, pm)
    return f"plugin '{plugin}' failed: {text}" if plugin else text
