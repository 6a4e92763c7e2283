r"""FI-UAP+ (Eq. 18) on Privacy-LFW.

  python -m experiments.run --config=experiments/configs/fi_uap_plus.py:dlib --workdir=runs/privacy_lfw_quick
  python -m experiments.run --config=experiments/configs/fi_uap_plus.py:dlib_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_plus.py:sface_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_plus.py:dlib_mdfa_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_plus.py:sface_mdfa_full --workdir=runs/privacy_lfw

Cost on the 2-core CPU machine (generation, 62 identities): ~10-13 min per 16-step row, 74 min (dlib) or 3.4 h
(SFace; 12,186 s measured, ~10 min of it on a shared machine) with ``_mdfa``; per-variant breakdown in
experiments/configs/common.py.
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("fi-uap+", arg)
