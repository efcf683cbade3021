"""The Debian-specific part of the real-music set (bench/realmusic.py): which packages, and getting
their files without installing them (`apt-get download` + `dpkg-deb -x` into a cache folder).

Each package becomes one class (one style of music). The cache holds the .deb files
(`CACHE/debs/`) and one extracted tree per package version (`CACHE/x/<package>_<version>/`, made
in a temp folder and renamed when complete, so an interrupted run extracts again). Audio inside a
Quake-style .pk3 (a zip: nexuiz-music's music.pk3) is unpacked next to it into `<file>.d/`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile

from bench.realmusic_set import AUDIO_EXTENSIONS, MODULE_EXTENSIONS

# the packages, in its order
PACKAGES = ("nexuiz-music", "asc-music", "drascula-music", "fretsonfire-songs-muldjord",
            "fretsonfire-songs-sectoid", "boswars-data", "hyperrogue-music", "planetblupi-music-ogg",
            "colobot-common-sounds", "fb-music-high")

# Variants that the names do not reveal, kept together (group key -> the key it is a variant of).
# Grouping two different pieces costs a little data; splitting two versions of one piece leaks it.
ALIASES: dict[str, dict[str, str]] = {
    "colobot-common-sounds": {
        "hv2": "humanitarian",   # read as "H(umanitarian) v2"; similar in a per-second log-mel check
        "music011": "music010",  # same length (84 s) and sound; the most similar pair in that check
    },
}


class PackageError(Exception):
    """A package that cannot be had here (unknown to apt, download or extraction failed)."""


def _run(cmd: list[str], cwd: str | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise PackageError(f"{cmd[0]} not found: this needs a Debian-based system (apt, dpkg)")
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise PackageError(f"{' '.join(cmd[:2])}: {last}")
    return p.stdout


def package_version(package: str) -> str:
    """The candidate version apt would download."""
    try:
        out = _run(["apt-cache", "show", "--no-all-versions", package])
    except PackageError as e:
        raise PackageError(f"not known to apt ({e})") from None
    m = re.search(r"^Version:\s*(\S+)", out, re.M)
    if not m:
        raise PackageError("not known to apt (apt-cache show lists no version; run apt-get update?)")
    return m.group(1)


def download(package: str, version: str, cache: str) -> str:
    """The package's .deb in CACHE/debs, downloaded once."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    prefix = f"{package}_{version.replace(':', '%3a')}_"

    def find() -> str | None:
        hits = sorted(n for n in os.listdir(debs) if n.startswith(prefix) and n.endswith(".deb"))
        return os.path.join(debs, hits[0]) if hits else None

    deb = find()
    if deb is None:
        _run(["apt-get", "download", f"{package}={version}"], cwd=debs)
        deb = find()
        if deb is None:
            raise PackageError(f"apt-get download left no {prefix}*.deb in {debs}")
    return deb


def extract(package: str, version: str, deb: str, cache: str) -> str:
    """The package's files, extracted once into CACHE/x/<package>_<version>/ (and its .pk3 audio)."""
    root = os.path.join(cache, "x", f"{package}_{version.replace(':', '%3a')}")
    if os.path.isdir(root):
        return root
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=os.path.basename(root) + ".tmp")
    try:
        _run(["dpkg-deb", "-x", deb, tmp])
        for folder, _, files in os.walk(tmp):
            for name in sorted(files):
                path = os.path.join(folder, name)
                if name.lower().endswith(".pk3") and not os.path.islink(path):
                    unpack_audio(path, path + ".d")
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def unpack_audio(archive: str, dest: str) -> int:
    """Unpack the audio members of a zip (a .pk3) into dest; names that would leave dest are skipped."""
    n = 0
    try:
        with zipfile.ZipFile(archive) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                name = info.filename
                if info.is_dir() or not name.lower().endswith(AUDIO_EXTENSIONS + MODULE_EXTENSIONS):
                    continue
                target = os.path.normpath(os.path.join(dest, name))
                if os.path.isabs(name) or not target.startswith(os.path.normpath(dest) + os.sep):
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                n += 1
    except (zipfile.BadZipFile, OSError) as e:
        raise PackageError(f"{os.path.basename(archive)}: cannot unpack ({e})") from None
    return n


def fetch(package: str, cache: str) -> tuple[str, str]:
    """(version, extracted tree) of a package, from the cache when it is there."""
    version = package_version(package)
    deb = download(package, version, cache)
    return version, extract(package, version, deb, cache)
