"""MusicNet-layout loader: CSV semantics (44.1 kHz sample units, start inclusive / end exclusive,
looked up at window centres), resampling cache, crops."""
from __future__ import annotations

import numpy as np
import pytest

from tests.training.musicnet_fixture import write_fixture
from training.data.musicnet import Labels, MusicNet


@pytest.fixture()
def root(tmp_path):
    return write_fixture(tmp_path / "mn")


def test_labels_sample_units_and_interval_semantics(root):
    lab = Labels.from_csv(root / "train_labels" / "1001.csv")
    pos = np.array([0, 22049, 22050, 44099, 44100, 66149, 66150, 88199, 88200])
    roll = lab.active(pos, [60, 64, 67])
    expected = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1],
                         [0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(roll, expected)
    # Unsorted queries and pitches outside the requested columns.
    np.testing.assert_array_equal(lab.active(pos[::-1], [67, 60])[::-1], expected[:, [2, 0]])
    assert lab.active(pos, [21]).sum() == 0


def test_dataset_resamples_once_and_labels_window_centres(root):
    ds = MusicNet(root, "train", sample_rate=16000)
    assert len(ds) == 2 and [r.id for r in ds.recordings] == ["1001", "1002"]
    rec = ds.recordings[0]
    assert abs(len(rec) - round((88200 + 4410) * 16000 / 44100)) <= 2
    cache = root / ".cache_16000" / "train" / "1001.npy"
    assert cache.exists()
    mtime = cache.stat().st_mtime_ns
    MusicNet(root, "train", sample_rate=16000)
    assert cache.stat().st_mtime_ns == mtime  # second load uses the cache
    # Model-rate position 8000 (0.5 s) -> 22050 at 44.1 kHz: note 64 starts exactly there.
    roll = ds.labels_at(0, np.array([7999, 8000, 16000]), [60, 64, 67])
    np.testing.assert_array_equal(roll, [[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    # Resampled audio keeps the tone: strongest FFT bin near 261.6 Hz in the first half second.
    x = ds.crop(0, 0, 8000)
    peak = np.argmax(np.abs(np.fft.rfft(x))) * 16000 / 8000
    assert abs(peak - 261.6) < 3


def test_crop_pads_with_zeros_outside_the_recording(root):
    ds = MusicNet(root, "test", sample_rate=11025)
    x = ds.crop(0, -100, 300)
    assert x.shape == (300,) and x.dtype == np.float32
    assert np.all(x[:100] == 0) and np.abs(x[100:]).max() > 0
    n = len(ds.recordings[0])
    assert np.all(ds.crop(0, n - 10, 50)[10:] == 0)


def test_notes_dedupe_unisons(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"
                 "0,44100,1,60,0,1,Quarter\n0,44100,41,60,0,1,Quarter\n44100,88200,41,62,1,1,Quarter\n")
    intervals, pitches = Labels.from_csv(p).notes()
    np.testing.assert_allclose(intervals, [[0, 1], [1, 2]])
    np.testing.assert_array_equal(pitches, [60, 62])


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MusicNet layout"):
        MusicNet(tmp_path, "train")
