"""Crafted audio files for tests."""
import numpy as np
import soundfile as sf


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def write(path, x: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str | None = None) -> str:
    sf.write(str(path), x, rate, subtype=subtype, format=fmt)
    return str(path)
