"""The library and the trainer apart: no module of `taskembed` imports `taskembed_train` or test support."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import taskembed
names = [m.name for m in pkgutil.walk_packages(taskembed.__path__, "taskembed.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("taskembed_train", "support", "tests"))))
"""


def test_no_library_module_imports_the_trainer_or_test_support():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split("\n")
    assert int(out[0]) > 20  # every module was imported, serve/ and eval/ included
    assert out[1] == "", f"the library imports {out[1]}"


def test_the_train_command_reaches_the_trainer():
    out = subprocess.run([sys.executable, "-m", "taskembed", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--config" in out.stdout
