"""The experiment launchers for real, in subprocesses: a run killed with SIGKILL resumes without redoing
finished identities, and two processes on localhost (JAX CPU collectives) split the identities and produce the
same masks as one process. Surrogate: the real dlib ResNet; data: the synthetic noise protocol (no data set)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from opomjax.pipeline import masks

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_IDS = 5
FLAGS = [
    "--config=experiments/configs/fi_uap.py:dlib",
    "--config.dataset.name=synthetic",
    f"--config.dataset.num_identities={NUM_IDS}",
    "--config.group_size=1",
    "--config.steps=2",
]
RUN_DIR = "fi-uap-dlib_resnet"


def launch(module, workdir, *extra, **popen):
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen(
      [sys.executable, "-m", module, *FLAGS, f"--workdir={workdir}", *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def read_masks(workdir):
  files = sorted((pathlib.Path(workdir) / RUN_DIR / "masks").glob("*.npz"))
  return {f.stem: masks.load_mask(f) for f in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted single-process run."""
  workdir = tmp_path_factory.mktemp("reference")
  finish(launch("experiments.generate", workdir))
  found = read_masks(workdir)
  assert len(found) == NUM_IDS
  return found


def test_killed_run_resumes_without_redoing_finished_identities(tmp_path, reference):
  mask_dir = tmp_path / RUN_DIR / "masks"
  proc = launch("experiments.generate", tmp_path)
  deadline = time.time() + 600
  while time.time() < deadline and len(list(mask_dir.glob("*.npz"))) < 2:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in mask_dir.glob("*.npz")}
  assert 2 <= len(finished) < NUM_IDS, "the kill must land in the middle of the run"
  for name in finished:  # everything visible after a kill is a whole, valid mask file
    assert masks.is_complete(mask_dir / name)
  timing = tmp_path / RUN_DIR / "generation.0.json"
  killed_seconds = json.loads(timing.read_text())["seconds"]  # the finished groups' time survives the kill
  assert killed_seconds > 0

  out = finish(launch("experiments.generate", tmp_path))
  for name, (mtime, data) in finished.items():  # finished identities were not redone
    assert (mask_dir / name).stat().st_mtime_ns == mtime and (mask_dir / name).read_bytes() == data
  assert f"'skipped': {len(finished)}" in out
  assert json.loads(timing.read_text())["seconds"] > killed_seconds  # the resumed run adds its own time
  resumed = read_masks(tmp_path)
  assert sorted(resumed) == sorted(reference)
  for name, (mask, meta) in resumed.items():  # identical to the uninterrupted run, bit for bit
    np.testing.assert_array_equal(mask, reference[name][0])
    assert np.abs(mask).max() <= 8.0


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_split_identities_and_match_one_process(tmp_path, reference):
  address = f"127.0.0.1:{free_port()}"
  procs = [
      launch("experiments.generate", tmp_path, "--config.distributed=True",
             f"--config.coordinator_address={address}", "--config.num_processes=2", f"--config.process_id={i}")
      for i in range(2)
  ]
  outs = [finish(p) for p in procs]
  got = read_masks(tmp_path)
  assert sorted(got) == sorted(reference)
  owners = {name: meta["process_index"] for name, (_, meta) in got.items()}
  for name, (_, meta) in got.items():  # group g belongs to process g % 2
    assert owners[name] == meta["group"] % 2
  assert set(owners.values()) == {0, 1}
  for name, (mask, _) in got.items():
    np.testing.assert_array_equal(mask, reference[name][0])
  # groups 0, 2, 4 on process 0 and 1, 3 on process 1, each process generating only its own
  assert "process 0: {'method': 'fi-uap', 'generated': 3, 'skipped': 0" in outs[0]
  assert "process 1: {'method': 'fi-uap', 'generated': 2, 'skipped': 0" in outs[1]
