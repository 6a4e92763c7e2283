r"""OPOM-AffineHull (Eq. 8) on Privacy-LFW.

  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:sface_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:dlib_mdfa_full --workdir=runs/privacy_lfw
  python -m experiments.run --config=experiments/configs/opom_affine.py:sface_mdfa_full --workdir=runs/privacy_lfw

Cost on a 2-core CPU: see the timing table in docs/results/README.md (COST_PLACEHOLDER).
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("opom-affine", arg)
