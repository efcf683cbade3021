"""Crafted audio files for tests."""
import numpy as np
import soundfile as sf


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def write(path, x: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str | None = None) -> str:
    sf.write(str(path), x, rate, subtype=subtype, format=fmt)
    return str(path)


def truncate(path, keep_fraction: float) -> str:
    """Cut bytes off the end of a file (an interrupted copy): the header still promises them."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep_fraction)])
    return str(path)


def no_frames_wav(path, rate: int = 22_050) -> str:
    """A valid WAV header whose data chunk is empty."""
    sf.write(str(path), np.zeros(0), rate, subtype="PCM_16", format="WAV")
    return str(path)


def broken_flac(path, seconds: float = 3.0, rate: int = 22_050) -> str:
    """A FLAC whose header opens but whose frames are zeroed mid-stream: decoding fails part-way."""
    sf.write(str(path), sine(440, seconds, rate), rate, subtype="PCM_16", format="FLAC")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + 2000] = bytes(2000)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)
