r"""The main job: OPOM-ConvexHull and FI-UAP side by side on Privacy-LFW, dlib ResNet surrogate, evaluated
against dlib (white-box) and SFace through onnxruntime (black-box, when its model file is present).

  python -m experiments.run                                    # the first 10 identities
  python -m experiments.run --config.dataset.num_identities=0  # all 62 identities

Cost on the 2-core CPU machine (measured from a fresh clone): 12.5 min for the first 10 identities, including
the clean features of both targets; all 62 identities: 21.4 min (measured, idle machine).
"""

from experiments.configs import common


def get_config(arg: str = "dlib"):
  return common.method_config("fi-uap,opom-convex", arg)
