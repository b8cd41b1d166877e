"""The set-up is reproducible: the test environment is exactly requirements.lock (issue 12)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import check_lock  # noqa: E402


def test_the_environment_is_exactly_the_lock():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(ROOT / "requirements.lock"),
                           "--exact"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_lock_names_every_kind_of_difference(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("# comment\nnumpy==1.26.4\nPyYAML==6.0.3\nscipy==1.17.1\n")
    pins = check_lock.read_lock(lock)
    assert pins == {"numpy": "1.26.4", "pyyaml": "6.0.3", "scipy": "1.17.1"}
    have = {"numpy": "2.0.0", "pyyaml": "6.0.3", "dill": "0.4.1"}
    bad = check_lock.differences(pins, have, exact=True)
    assert bad == ["dill==0.4.1 is installed but not in the lock", "numpy==2.0.0 is installed, the lock says 1.26.4",
                   "scipy==1.17.1 is locked but not installed"]
    assert check_lock.differences(pins, {"numpy": "1.26.4"}, exact=False) == []


def test_programs_run_on_jemalloc_unless_told_otherwise():
    """scripts/setup.sh installs jemalloc; ``ensure()`` re-executes a program under it once, MINDEDIT_ALLOCATOR=system
    keeps glibc's, and a wrong value is a clear error."""
    import os
    from mindedit.utils import allocator
    assert allocator.library(), "libjemalloc2 is not installed (scripts/setup.sh installs it)"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, allocator._TRIED)}
    code = "from mindedit.utils.allocator import active, ensure; print('start', end=' '); ensure(); print(active())"

    def run(**extra):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(env, **extra))

    assert run().stdout == "start start jemalloc\n"  # re-executed once
    assert run(MINDEDIT_ALLOCATOR="system").stdout == "start glibc\n"
    bad = run(MINDEDIT_ALLOCATOR="tcmalloc")
    assert bad.returncode != 0 and "MINDEDIT_ALLOCATOR='tcmalloc': expected 'jemalloc'" in bad.stderr
