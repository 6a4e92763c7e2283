r"""OPOM-AffineHull (Eq. 8) on Privacy-LFW.

  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib --workdir=runs/privacy_lfw_quick
  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:sface_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib_mdfa_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:sface_mdfa_full --workdir=runs/privacy_lfw

Cost on the 2-core CPU machine (generation, 62 identities): ~10-13 min per 16-step row, 70-74 min (dlib) or
3.1 h (SFace, 11,231 s measured) with ``_mdfa``; per-variant breakdown in experiments/configs/common.py.
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("opom-affine", arg)
