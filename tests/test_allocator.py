import ctypes
import os
import subprocess
import sys

import pytest

# A CPU Embedder applies the setting when it is built; later calls return the same answer.
CODE = """
import taskembed.allocator as a
from support.tiny import make_tiny_embedder
print(a._done)
make_tiny_embedder()
print(a._done, a.tune_cpu_allocator() is a._done)
"""


def _run(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TASKEMBED_MALLOC_TUNING"}
    if env_value is not None:
        env["TASKEMBED_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
        return sys.platform.startswith("linux")
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="mallopt tuning is glibc-only")
def test_allocator_tuning_applies_once_on_glibc():
    assert _run(None) == ["None", "True", "True"]


def test_allocator_tuning_can_be_turned_off():
    assert _run("0") == ["None", "False", "True"]
