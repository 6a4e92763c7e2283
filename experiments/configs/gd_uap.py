r"""GD-UAP (Eq. 16) on Privacy-LFW.

  python -m experiments.run --config=experiments/configs/gd_uap.py:dlib --workdir=runs/privacy_lfw_quick
  python -m experiments.run --config=experiments/configs/gd_uap.py:dlib_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/gd_uap.py:sface_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/gd_uap.py:dlib_mdfa_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/gd_uap.py:sface_mdfa_full --workdir=runs/privacy_lfw

Cost on the 2-core CPU machine (16 steps, idle machine: ~10 s per identity with the dlib surrogate, ~12 s with
SFace; evaluation: clean features once per target, ~3 min for dlib and ~4 min for SFace/onnxruntime, then
~30 s per method): ``:dlib`` (10 identities) ~3 min + evaluation; ``:dlib_full`` (62) 10-11 min + evaluation
(measured for every method in docs/results: 615-685 s of generation); ``:sface_full`` 10-13 min
(588-760 s measured for all six methods); ``_mdfa`` (100 steps, momentum + DFANet) ~7x those: with dlib 4,265 s
(OPOM-ConvexHull) and 4,361 s (FI-UAP) measured, with SFace ~1.5 h estimated. Unmeasured rows are estimates that scale linearly.
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("gd-uap", arg)
