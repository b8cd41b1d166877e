"""Compares the packages installed in this interpreter's environment with requirements.lock.

    python scripts/check_lock.py requirements.lock          every installed package must be locked, at its version
    python scripts/check_lock.py requirements.lock --exact  ... and every locked package installed (the test set)
Exit status 1 with the differences named. The editable mindedit itself is not a locked package.
"""
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path) -> dict:
    pins = {}
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}:{n}: {line!r}: expected NAME==VERSION")
        pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict:
    out = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in ("pip", "setuptools", "wheel", "mindedit"):  # what pip freeze leaves out
            continue
        out[name] = dist.version
    return out


def differences(pins: dict, have: dict, exact: bool) -> list:
    bad = [f"{n}=={v} is installed but not in the lock" for n, v in sorted(have.items()) if n not in pins]
    bad += [f"{n}=={v} is installed, the lock says {pins[n]}" for n, v in sorted(have.items())
            if n in pins and v != pins[n]]
    if exact:
        bad += [f"{n}=={v} is locked but not installed" for n, v in sorted(pins.items()) if n not in have]
    return bad


def main(argv):
    path, exact = argv[0], "--exact" in argv[1:]
    bad = differences(read_lock(path), installed(), exact)
    for line in bad:
        print(f"[setup] {path}: {line}", file=sys.stderr)
    if bad:
        print(f"[setup] the environment differs from {path}: refresh it with `bash scripts/lock.sh` (docs/environment.md)",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
