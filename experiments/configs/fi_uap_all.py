r"""FI-UAP-all (one mask for all identities) on Privacy-LFW.

  python -m experiments.run --config=experiments/configs/fi_uap_all.py:dlib --workdir=runs/privacy_lfw_quick
  python -m experiments.run --config=experiments/configs/fi_uap_all.py:dlib_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_all.py:sface_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_all.py:dlib_mdfa_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/fi_uap_all.py:sface_mdfa_full --workdir=runs/privacy_lfw

Cost on the 2-core CPU machine (generation, 62 identities; estimated, not measured for this method): ~10-13 min
per 16-step row, ~72 min (dlib) or ~3.2 h (SFace) with ``_mdfa``; per-variant breakdown in
experiments/configs/common.py.
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("fi-uap-all", arg)
