r"""The main job: OPOM-ConvexHull and FI-UAP side by side on Privacy-LFW, dlib ResNet surrogate, evaluated
against dlib (white-box) and SFace through onnxruntime (black-box, when its model file is present).

  python -m experiments.run                                    # the first 10 identities
  python -m experiments.run --config.dataset.num_identities=0  # all 62 identities

Cost on a 2-core CPU: see docs/results/README.md (COST_PLACEHOLDER).
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("fi-uap,opom-convex", arg)
