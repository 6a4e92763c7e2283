"""The experiment launchers for real, in subprocesses: a run killed with SIGKILL resumes without redoing
finished identities, two processes on localhost (JAX CPU collectives) split the identities and produce the
same masks as one process, a rerun with other settings is refused, and bad input ends in one ``error:`` line
before any work. Surrogate: the real dlib ResNet; data: the synthetic noise protocol (no data set)."""

import json
import os
import pathlib
import shutil
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


def run_launcher(module, *args, timeout=600):
  """Runs a launcher to the end; returns (exit status, stdout, stderr)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  return done.returncode, done.stdout, done.stderr


def assert_one_line_error(rc, stdout, stderr, *fragments):
  assert rc == 1, (stdout + stderr)[-3000:]
  assert "Traceback" not in stdout + stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]


@pytest.fixture(scope="module")
def reference_workdir(tmp_path_factory):
  """One uninterrupted single-process run."""
  workdir = tmp_path_factory.mktemp("reference")
  finish(launch("experiments.generate", workdir))
  return workdir


@pytest.fixture(scope="module")
def reference(reference_workdir):
  found = read_masks(reference_workdir)
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
  differing = {name: f"process {meta['process_index']}, group {meta['group']}: "
                     f"{int((mask != reference[name][0]).sum())} values differ"
               for name, (mask, meta) in got.items() if not np.array_equal(mask, reference[name][0])}
  assert not differing, differing  # bit for bit equal to the one-process run
  # groups 0, 2, 4 on process 0 and 1, 3 on process 1, each process generating only its own
  assert "process 0: {'method': 'fi-uap', 'generated': 3, 'skipped': 0" in outs[0]
  assert "process 1: {'method': 'fi-uap', 'generated': 2, 'skipped': 0" in outs[1]


def mask_bytes(workdir):
  return {p.name: p.read_bytes() for p in (pathlib.Path(workdir) / RUN_DIR / "masks").glob("*.npz")}


def test_rerun_with_other_epsilon_is_refused_and_same_settings_resume(tmp_path, reference_workdir):
  workdir = tmp_path / "run"
  shutil.copytree(reference_workdir, workdir)
  before = mask_bytes(workdir)
  rc, out, err = run_launcher("experiments.generate", *FLAGS, f"--workdir={workdir}", "--config.epsilon=4")
  assert_one_line_error(rc, out, err, "epsilon: 8.0 in the masks, 4.0 now", str(workdir / RUN_DIR / "masks"),
                        "--workdir")
  assert mask_bytes(workdir) == before
  out = finish(launch("experiments.generate", workdir))
  assert f"'generated': 0, 'skipped': {NUM_IDS}" in out
  assert mask_bytes(workdir) == before


@pytest.mark.parametrize("module,args,fragment", [
    ("experiments.generate", ["--config.methods=fi-uap,bogus"], "config.methods has unknown method(s) ['bogus']"),
    ("experiments.run", ["--config.targets=dlib_resnet,nope"], "config.targets: unknown model 'nope'"),
    ("experiments.run", ["--config.targets=missing.onnx"], "config.targets: no ONNX file missing.onnx"),
    ("experiments.generate", ["--config.epsilon=300"], "config.allow_large_epsilon=True"),
    ("experiments.evaluate", ["--config.steps=0"], "config.steps"),
    ("experiments.baselines", ["--models=dlib_resnet,nope"], "--models: unknown model 'nope'"),
    ("experiments.baselines", ["--random_mask_epsilon=300"], "--allow_large_epsilon"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, module, args, fragment):
  workdir = tmp_path / "run"
  common = [f"--out={workdir / 'b.json'}"] if module == "experiments.baselines" else [*FLAGS, f"--workdir={workdir}"]
  rc, out, err = run_launcher(module, *common, *args)
  assert_one_line_error(rc, out, err, fragment)
  assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob("*.json"))


def test_unwritable_workdir_fails_fast_with_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  rc, out, err = run_launcher("experiments.run", *FLAGS, f"--workdir={blocker / 'run'}")
  assert_one_line_error(rc, out, err, f"--workdir={blocker / 'run'} cannot be written")


@pytest.mark.slow
def test_ctrl_c_stops_with_a_message_and_keeps_finished_masks(tmp_path):
  mask_dir = tmp_path / RUN_DIR / "masks"
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  # 40 steps per identity (~20 s a group here): the run is still busy when Ctrl-C comes after the first mask.
  # Python turns SIGINT into KeyboardInterrupt only where it is not ignored at start, and a shell's background job
  # (pytest under nohup or `&`) passes it on ignored: the child gets the default disposition back first.
  proc = subprocess.Popen([sys.executable, "-m", "experiments.generate", *FLAGS, "--config.steps=40",
                           f"--workdir={tmp_path}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 600
  while time.time() < deadline and not list(mask_dir.glob("*.npz")):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and err.rstrip().splitlines()[-1].startswith("interrupted: every finished mask")
  files = sorted(mask_dir.iterdir())
  assert files and all(f.suffix == ".npz" and masks.is_complete(f) for f in files)  # no partial or temporary file
