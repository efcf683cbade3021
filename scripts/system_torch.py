"""Whether setup may reuse this Python's torch: prints `system` or `index` (scripts/setup.sh).

`system` only for a CUDA torch (with torchaudio) that sees a GPU and is at least MIN_TORCH:
before 2.6, torch.load(weights_only=True), which every checkpoint load here relies on, could
still run code from a crafted file (CVE-2025-32434). An older one is refused with the reason on
stderr: under PT_SETUP=system with exit 2, otherwise setup installs torch into the venv instead.
Standard library only: it runs before any venv exists.
"""
import os
import re
import sys

MIN_TORCH = (2, 6)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:2])


def main() -> int:
    forced = os.environ.get("PT_SETUP", "") == "system"
    try:
        import torch
        import torchaudio  # noqa: F401 - the venv must see both
        cuda = bool(torch.version.cuda) and torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure to import means: not usable
        torch, cuda = None, False
    if torch is None or not cuda:
        if forced:
            print(f"setup: PT_SETUP=system, but {sys.executable} has no working CUDA torch + torchaudio", file=sys.stderr)
            return 2
        print("index")
        return 0
    if version_tuple(torch.__version__) < MIN_TORCH:
        why = (f"setup: {sys.executable}'s torch {torch.__version__} is older than "
               f"{'.'.join(map(str, MIN_TORCH))}: its torch.load(weights_only=True) can run code from a crafted "
               f"checkpoint (CVE-2025-32434)")
        if forced:
            print(f"{why}; not reusing it (unset PT_SETUP, or PT_SETUP=index, to install torch into the venv)",
                  file=sys.stderr)
            return 2
        print(f"{why}; installing torch into the venv instead", file=sys.stderr)
        print("index")
        return 0
    print("system")
    return 0


if __name__ == "__main__":
    sys.exit(main())
