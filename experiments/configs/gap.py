r"""GAP (Generative Adversarial Perturbations, Poursaeed et al. 2018; OPOM Sec. 3.3.3) on Privacy-LFW: a ResNet
generator trained with Adam on every training photo to make one universal mask (FI-UAP loss, Eq. 17).

  python -m experiments.run --config=experiments/configs/gap.py:dlib --workdir=runs/gap_quick
  python -m experiments.run --config=experiments/configs/gap.py:dlib_full_all --workdir=runs/gap
  python -m experiments.run --config=experiments/configs/gap.py:sface_full_all --workdir=runs/gap
  python -m experiments.run --config=experiments/configs/gap.py:dlib_full_all --workdir=runs/gap \
      --config.gap.epochs=5 --config.gap.learning_rate=1e-3 --config.conditions=none,jpeg75

Cost on the 2-core CPU machine (shared with other jobs): ~9 s per Adam step of 32 photos with the dlib
surrogate (the generator's forward and backward pass on its one 128x128 noise image ~5.6 s of it); ``:dlib_full``
has 620 photos, 20 steps per epoch: 968 s measured for 5 epochs (100 steps), so ~30 min for the default 10;
``:dlib`` (10 identities, 4 steps per epoch) ~6 min; plus the evaluation (clean features cached in
``<workdir>/features``; ~10 min for the four targets of ``_all`` and two conditions). A killed run resumes
from its last finished epoch. Variants as in experiments/configs/common.py, except ``_mdfa`` and ``_eot`` (GAP
has no momentum, dropout or EOT) and ensembles (one surrogate).
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str = "dlib"):
  parts = set(arg.split("_")[1:]) if arg else set()
  if parts & {"mdfa", "eot"} or "+" in arg.split("_")[0]:
    raise ValueError(f"config variant {arg!r}: gap trains one generator with Adam on one surrogate; the _mdfa and "
                     "_eot variants and ensembles do not apply (e.g. dlib_full_all)")
  config = common.method_config("gap", arg)
  config.gap = ml_collections.ConfigDict()
  config.gap.epochs = 10  # passes over every training photo of the protocol
  config.gap.batch_size = 32  # photos per Adam step (the last step of an epoch is padded, with weight 0)
  config.gap.learning_rate = 2e-4  # Adam, as GAP
  config.gap.b1 = 0.5
  config.gap.b2 = 0.999
  config.gap.scaling = "linf"  # GAP's per-channel L-inf scaling to epsilon, or "tanh": epsilon * tanh
  config.gap.features = 64  # generator width (GAP's ngf)
  config.gap.blocks = 6  # residual blocks (GAP's resnet_6blocks)
  return config
