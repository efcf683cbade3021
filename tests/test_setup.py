"""scripts/setup.sh reuses a system torch only if it is a CUDA build >= 2.6 (scripts/system_torch.py):
older ones' torch.load(weights_only=True) is not safe (CVE-2025-32434). Checked with a stand-in
torch package on PYTHONPATH, run by the system's own python3, as setup runs it."""
import os
import subprocess
import sys

from helpers import ROOT


def fake_torch(root, version: str, cuda: bool = True) -> str:
    for name, body in (("torch", f"__version__ = {version!r}\n"
                                 f"class version:\n    cuda = {'12.4' if cuda else None!r}\n"
                                 f"class cuda:\n    is_available = staticmethod(lambda: {cuda})\n"),
                       ("torchaudio", "__version__ = '0'\n")):
        os.makedirs(root / name, exist_ok=True)
        (root / name / "__init__.py").write_text(body)
    return str(root)


def check(path: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", os.path.join(ROOT, "scripts", "system_torch.py")], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": path, **env}, timeout=60)


def test_a_system_torch_older_than_2_6_is_not_reused(tmp_path):
    old = fake_torch(tmp_path / "old", "2.5.1+cu124")
    p = check(old)
    assert p.returncode == 0 and p.stdout == "index\n"
    assert "torch 2.5.1+cu124 is older than 2.6" in p.stderr and "CVE-2025-32434" in p.stderr
    p = check(old, PT_SETUP="system")
    assert p.returncode == 2 and p.stdout == "" and "not reusing it" in p.stderr
    assert check(fake_torch(tmp_path / "new", "2.6.0+cu126")).stdout == "system\n"
    assert check(fake_torch(tmp_path / "cpu", "2.9.0", cuda=False)).stdout == "index\n"


def test_setup_refuses_before_making_a_venv(tmp_path):
    """PT_SETUP=system with an old torch: setup.sh stops with the reason, nothing created."""
    old = fake_torch(tmp_path / "old", "2.4.0")
    venv = tmp_path / "venv"
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup.sh")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": old, "PT_SETUP": "system", "VENV": str(venv),
                            "PYTHON": sys.executable})
    assert p.returncode == 2 and "torch 2.4.0 is older than 2.6" in p.stderr, p.stderr
    assert not venv.exists()
