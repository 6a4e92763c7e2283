"""Preparation under concurrency: processes preparing one dataset at once share the work, none crashes."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np

from opomjax.data import locks

REPO = pathlib.Path(__file__).resolve().parents[1]

#: Two people with two photos each (probes: one training, one test photo) and one person with one (distractor).
PHOTOS = {"Aaron_Peirsol": 2, "Abdullah_Gul": 2, "Zico": 1}

#: One preparing process: waits at the gate, loads the protocol, saves its arrays and how many photos it aligned.
CHILD = textwrap.dedent("""
    import os, pathlib, sys, time
    import numpy as np
    from opomjax.data import alignment, loading, protocols

    root, data_dir, detector, gate, out = sys.argv[1:]
    aligned = []
    align_files = alignment.align_files

    def counting_align_files(paths, **kwargs):
      aligned.extend(paths)
      return align_files(paths, **kwargs)

    alignment.align_files = counting_align_files
    rule = protocols.SplitRule(min_images=2, num_train=1, num_test=1)
    pathlib.Path(out + ".ready").touch()
    while not os.path.exists(gate):
      time.sleep(0.005)
    protocol = loading.load_protocol("folder", root=root, rule=rule, data_dir=data_dir, num_workers=1,
                                     detector_path=detector)
    np.savez(out, train=protocol.train, test=protocol.test, distractors=protocol.distractors,
             names=np.array(protocol.names), aligned=len(aligned))
""")


def photo_subset(lfw_root: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  """A ``dest/PERSON/*.jpg`` folder of symbolic links to a few LFW photos."""
  for name, count in PHOTOS.items():
    (dest / name).mkdir(parents=True)
    for photo in sorted((lfw_root / name).iterdir())[:count]:
      (dest / name / photo.name).symlink_to(photo)
  return dest


def test_two_processes_preparing_one_dataset_at_once(lfw_root, yunet_onnx, tmp_path):
  root = photo_subset(lfw_root, tmp_path / "people")
  data_dir, gate = tmp_path / "tfds", tmp_path / "go"
  outs = [tmp_path / f"child{i}" for i in range(2)]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  children = [
      subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(data_dir), str(yunet_onnx), str(gate), str(out)],
                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for out in outs
  ]
  try:
    deadline = time.monotonic() + 120
    while not all(pathlib.Path(f"{out}.ready").exists() for out in outs):
      assert time.monotonic() < deadline, "the preparing processes did not start"
      assert all(c.poll() is None for c in children), [c.communicate() for c in children]
      time.sleep(0.05)
    gate.touch()  # both processes start preparing now
    results = [c.communicate(timeout=240) for c in children]
  finally:
    for c in children:
      if c.poll() is None:
        c.kill()
  for child, (_, stderr) in zip(children, results):
    assert child.returncode == 0, stderr[-3000:]

  runs = [np.load(f"{out}.npz") for out in outs]
  # Exactly one process aligned photos (all 5 the protocol uses), the other read its files ...
  assert sorted(int(r["aligned"]) for r in runs) == [0, sum(PHOTOS.values())]
  # ... after waiting for it, and said so.
  waiter = next(i for i, r in enumerate(runs) if int(r["aligned"]) == 0)
  assert "waiting for another process preparing identity_folder" in results[waiter][1]
  assert "waiting for another process" not in results[1 - waiter][1]
  # Both hold the same arrays: the chips of the real photos.
  assert tuple(runs[0]["names"]) == ("Aaron_Peirsol", "Abdullah_Gul")
  assert runs[0]["train"].shape[:2] == (2, 1) and runs[0]["distractors"].shape[0] == 1
  for key in ("train", "test", "distractors", "names"):
    np.testing.assert_array_equal(runs[0][key], runs[1][key])
  assert runs[0]["train"].std() > 10  # real photos, not blank chips


HOLDER = textwrap.dedent("""
    import fcntl, pathlib, sys, time
    path = pathlib.Path(sys.argv[1])
    with open(path, "a") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      pathlib.Path(sys.argv[2]).touch()
      time.sleep(float(sys.argv[3]))
""")


def test_file_lock_waits_for_the_holder_and_says_so(tmp_path, capsys):
  path = locks.lock_path(tmp_path, "dataset", "config/1", "1.0.0")
  assert path == tmp_path / ".locks" / "dataset-config_1-1.0.0.lock"
  path.parent.mkdir(parents=True)
  held = tmp_path / "held"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(held), "1.5"])
  try:
    deadline = time.monotonic() + 30
    while not held.exists():
      assert time.monotonic() < deadline and holder.poll() is None
      time.sleep(0.01)
    start = time.monotonic()
    with locks.file_lock(path, waiting_message="waiting for the holder") as waited:
      waited_s = time.monotonic() - start  # the lock came only when the holder let go
  finally:
    holder.wait(timeout=30)
  assert waited and waited_s > 0.5
  assert f"waiting for the holder (lock {path})" in capsys.readouterr().err
  with locks.file_lock(path) as waited_again:  # free now: no wait, no message
    assert not waited_again
  assert capsys.readouterr().err == ""
