"""The edge of the I/O-free core stays drawn: the endpoint and the device model import no
module that reaches the OS; fd work goes through the injected FdPort (fdport.py)."""

import ast
from pathlib import Path

import pytest

import qemu_device

PKG = Path(qemu_device.__file__).parent
CORE = ["connection.py", "handlers.py", "protocol.py", "fdport.py",
        *(f"device/{p.name}" for p in sorted((PKG / "device").glob("*.py")))]
IO_MODULES = {"os", "mmap", "socket", "select", "selectors", "stat", "subprocess", "fcntl",
              "signal", "array", "shutil", "tempfile", "pathlib", "io"}
IO_SIBLINGS = {"fdio", "transport", "server", "cli", "testing"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module.split(".")[0])
            elif node.module:
                names.add("." + node.module.split(".")[-1])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_no_io(module):
    found = _imports(PKG / module)
    assert not found & IO_MODULES, f"{module} imports {sorted(found & IO_MODULES)}"
    assert not {n.lstrip(".") for n in found if n.startswith(".")} & IO_SIBLINGS, \
        f"{module} imports an I/O module of the package"
    assert "open(" not in (PKG / module).read_text()
