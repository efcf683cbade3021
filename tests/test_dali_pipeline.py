import io
import os
import tarfile
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from features.torch_logmel import LogMel
from loading.loader import DaliLoader
from core.spec import FeatureSpec
from preprocess.make_shards import make_shards
from preprocess.synth import generate


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """13 training clips in 3 shards (1.5-2.5 s): divides evenly neither by ranks nor by batch."""
    base = tmp_path_factory.mktemp("uneven")
    generate(str(base / "src"), per_class=13, seconds=2.0, genres=["pop"], progress=False)
    import soundfile as sf
    x, sr = sf.read(base / "src" / "pop" / "pop.00003.wav")
    sf.write(base / "src" / "pop" / "pop.00003.wav", x[: int(1.5 * sr)], sr)  # a clip shorter than the crop
    m = make_shards(str(base / "src"), str(base / "shards"), val=0, test=0, min_shards=3, workers=1, progress=False)
    assert len(m["splits"]["train"]["shards"]) == 3 and m["splits"]["train"]["count"] == 13
    return str(base / "shards"), m


def _epochs(shards: str, world: int, batch: int, train: bool, epochs: int = 2, spec=FeatureSpec(clip_seconds=2.0)):
    loaders = [DaliLoader(shards, "train", spec, batch, train=train, rank=r, world_size=world, num_threads=1)
               for r in range(world)]
    out = []
    for _ in range(epochs):
        per_rank = []
        for ld in loaders:
            batches = list(ld)
            assert len(batches) == len(ld)
            per_rank.append(batches)
        out.append(per_rank)
    return out


@pytest.mark.parametrize("world,batch", [(2, 4), (2, 8), (3, 4), (1, 5)])
def test_every_sample_once_per_epoch_and_equal_batches(uneven, world, batch):
    shards, m = uneven
    for per_rank in _epochs(shards, world, batch, train=True):
        assert len({len(b) for b in per_rank}) == 1, "ranks got different numbers of batches"
        counted = Counter()
        for batches in per_rank:
            for b in batches:
                assert b.x.shape == (batch, 1, 128, FeatureSpec(clip_seconds=2.0).clip_frames)
                for u, w in zip(b.uid.tolist(), b.weight.tolist()):
                    counted[u] += w
        assert counted == Counter({s["uid"]: 1.0 for s in m["samples"]})


def test_crops_per_track_gives_k_different_crops_of_each_track_once(uneven):
    shards, m = uneven
    spec, k = FeatureSpec(clip_seconds=1.0), 3
    loaders = [DaliLoader(shards, "train", spec, 4, train=True, rank=r, world_size=2, num_threads=1, crops=k)
               for r in range(2)]
    counted = Counter()
    for ld in loaders:
        batches = list(ld)
        assert len(batches) == len(ld) == 2  # ceil(ceil(13 / 2) / 4) steps: crops add rows, not steps
        for b in batches:
            assert b.x.shape == (4 * k, 1, 128, spec.clip_frames)
            for t in range(4):  # a track's k rows are adjacent, share label/uid/weight, and are different crops
                rows = slice(t * k, (t + 1) * k)
                assert len(set(b.uid[rows].tolist())) == len(set(b.y[rows].tolist())) == 1
                assert len(set(b.weight[rows].tolist())) == 1
                x = b.x[rows]
                assert all((x[i] - x[j]).abs().max() > 0.1 for i in range(k) for j in range(i + 1, k))
            for u, w in zip(b.uid.tolist(), b.weight.tolist()):
                counted[u] += w
    assert counted == Counter({s["uid"]: float(k) for s in m["samples"]})


def test_eval_mode_gives_whole_tracks_in_order(uneven):
    shards, m = uneven
    (per_rank,) = _epochs(shards, 2, 4, train=False, epochs=1)
    seen = [u for batches in per_rank for b in batches for u, w in zip(b.uid.tolist(), b.weight.tolist()) if w]
    assert sorted(seen) == sorted(s["uid"] for s in m["samples"])
    by_uid = {s["uid"]: s for s in m["samples"]}
    for b in per_rank[0]:
        for u, n in zip(b.uid.tolist(), b.n_samples.tolist()):
            assert n == round(by_uid[u]["duration"] * 22050)
        assert b.x.shape[-1] == 1 + int(b.n_samples.max()) // 512


def test_dali_matches_torchaudio(train_shards):
    """The DALI graph (training) and torchaudio (predict.py) give the same log-mels."""
    shards, _, m = train_shards
    spec = FeatureSpec()
    logmel = LogMel(spec)
    by_uid = {s["uid"]: s for s in m["samples"]}
    errs = []
    for b in DaliLoader(shards, "val", spec, 4, train=False):
        for i, u in enumerate(b.uid.tolist()):
            s = by_uid[u]
            with tarfile.open(os.path.join(shards, s["shard"])) as tf:
                x, _ = sf.read(io.BytesIO(tf.extractfile(s["key"] + ".wav").read()), dtype="float32")
            ref = logmel(torch.from_numpy(x))
            errs.append(((b.x[i, 0, :, : ref.shape[-1]] - ref).abs() * spec.norm_std).flatten())
    err = torch.cat(errs)
    # Worst case comes from DALI's float32 mel filter edge weights (up to 0.4% off float64) on pure tones.
    assert err.max() < 0.02, f"max abs difference {err.max():.4f} dB"
    assert torch.quantile(err[::13], 0.999) < 0.003
    print(f"DALI vs torchaudio: max {err.max():.5f} dB, median {err.median():.6f} dB over {err.numel()} bins")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 training clips in a single shard: fewer samples than ranks x batch."""
    base = tmp_path_factory.mktemp("tiny")
    generate(str(base / "src"), per_class=3, seconds=1.5, genres=["rock"], progress=False)
    m = make_shards(str(base / "src"), str(base / "shards"), val=0, test=0, min_shards=1, workers=1, progress=False)
    assert len(m["splits"]["train"]["shards"]) == 1 and m["splits"]["train"]["count"] == 3
    return str(base / "shards"), m


@pytest.mark.parametrize("world,batch", [(2, 4), (2, 1), (4, 2)])
def test_one_small_shard_on_many_ranks(tiny, world, batch):
    shards, m = tiny
    for per_rank in _epochs(shards, world, batch, train=True, spec=FeatureSpec(clip_seconds=1.0)):
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) >= 1
        counted = Counter()
        for batches in per_rank:
            for b in batches:
                for u, w in zip(b.uid.tolist(), b.weight.tolist()):
                    counted[u] += w
        assert counted == Counter({s["uid"]: 1.0 for s in m["samples"]})


@pytest.mark.parametrize("augment", ["none", "gain+masks"])
def test_crops_from_audio_equal_crops_from_features(train_shards, augment):
    """The CPU way (each crop's samples + context, uncentred log-mel) and the GPU way (one log-mel of
    the track, crops sliced from it) give the same crops, and each crop is a window of the track's
    torchaudio log-mel (what evaluation and predict.py cut), at a frame boundary."""
    from core.spec import Augment
    shards, _, m = train_shards
    spec = FeatureSpec()
    aug = Augment(gain_db=6.0, freq_masks=2, time_masks=2) if augment != "none" else None
    out = {}
    for way in ("audio", "features"):
        ld = DaliLoader(shards, "train", spec, 4, train=True, crops=3, num_threads=2, crop_from=way, augment=aug, seed=7)
        out[way] = [(b.x.clone(), b.uid.clone()) for b in ld]
    assert len(out["audio"]) == len(out["features"]) > 0
    for (xa, ua), (xf, uf) in zip(out["audio"], out["features"]):
        assert torch.equal(ua, uf)
        assert ((xa - xf).abs() * spec.norm_std).max() < 0.01  # dB; float32 gain arithmetic only
    if aug is not None:
        return
    # without augmentation: every crop equals the torchaudio log-mel of the whole track at some frame
    by_uid = {s["uid"]: s for s in m["samples"]}
    logmel = LogMel(spec)
    checked, starts = 0, set()
    x, uid = out["audio"][0]
    for i in range(0, len(uid), 3):
        s = by_uid[int(uid[i])]
        with tarfile.open(os.path.join(shards, s["shard"])) as tf:
            wav, _ = sf.read(io.BytesIO(tf.extractfile(s["key"] + ".wav").read()), dtype="float32")
        ref = logmel(torch.from_numpy(wav))
        for k in range(3):
            crop = x[i + k, 0]
            err = torch.stack([(ref[:, t:t + spec.clip_frames] - crop).abs().max()
                               for t in range(ref.shape[-1] - spec.clip_frames + 1)])
            t = int(err.argmin())
            assert err[t] * spec.norm_std < 0.02, f"crop {k} of {s['key']} is no window of the track's log-mel"
            assert 2 <= t <= ref.shape[-1] - spec.clip_frames - 2  # clear of the reflect-padded edges
            starts.add((s["key"], t))
            checked += 1
    assert checked >= 6 and len(starts) > checked // 2  # crops land at different places


def test_preload_cufft_maps_a_library_found_in_the_wheels_lib_folders(tmp_path):
    """No GPU needed: a stand-in libcufft.so.12 (a copy of libm) in a wheel-like nvidia/cu13/lib is
    mapped into the process, so DALI's later dlopen finds it whatever was imported first."""
    import ctypes.util
    import shutil

    from features.dali_graph import preload_cufft
    libm = ctypes.util.find_library("m")
    src = next(p for p in ("/lib/x86_64-linux-gnu/" + libm, "/usr/lib/x86_64-linux-gnu/" + libm, "/lib64/" + libm)
               if os.path.exists(p))
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    shutil.copy(src, lib / "libcufft.so.12")
    (lib / "libcufft.so.bad").write_bytes(b"not a library")
    assert preload_cufft([str(lib)]) == [str(lib / "libcufft.so.12")]
    assert str(lib / "libcufft.so.12") in open("/proc/self/maps").read()


def test_speed_perturbation_moves_each_crops_pitch_within_its_range(tmp_path):
    """Augment(speed=S): every crop is its stretch of the track resampled to the crop's length, so a
    pure tone's peak lands at f x rate with rate in [1 - S, 1 + S], a different rate per crop; off,
    the peak stays at f. It needs audio crops: asking for crops from features is one error.
    (tests/test_gpu.py runs the same check on the GPU.)"""
    from core.spec import Augment
    from helpers import tone_pitch_ratios, tone_shards
    shards, f_of = tone_shards(tmp_path)
    still = tone_pitch_ratios(shards, f_of, 0.0)
    assert len(still) == 24 and max(abs(r - 1) for r in still) < 0.03  # within a mel band of f
    moved = tone_pitch_ratios(shards, f_of, 0.2)
    assert all(0.8 - 0.03 < r < 1.2 + 0.03 for r in moved), moved
    assert max(moved) - min(moved) > 0.15 and len({round(r, 2) for r in moved}) > 8, moved
    with pytest.raises(ValueError, match="needs crop_from='audio'"):
        DaliLoader(shards, "train", FeatureSpec(clip_seconds=2.0), 3, train=True, crop_from="features",
                   augment=Augment(speed=0.1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 0.5\)"):
        Augment(speed=0.5)
