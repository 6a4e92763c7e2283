"""Shared pieces of the experiment configs (ml_collections ConfigDicts).

Variants (the ``:ARG`` after a config file name): ``dlib`` (surrogate dlib ResNet), ``sface`` (surrogate SFace in
JAX), ``faceres`` or ``mobileface`` (the TensorFlow.js models in JAX; the surrogate is always also evaluated as a
target, white-box), each optionally with ``_mdfa`` (momentum + DFANet, the paper's Table 4/5 setting: 100 steps,
μ = 1.0, dropout 0.1, the clean features recomputed under dropout at every step as the official code does, where
DFANet elsewhere takes them once, ``config.dfanet_clean_once``; 0.02 for SFace, whose plain chain of convolutions
does not tolerate more; faceres and mobileface lose their features even at 0.02, so a run with them under DFANet
stops before its first step and names the model, ``opomjax.models.dropout.check_dropout_tolerance``, unless
``--config.dropout`` is lowered to ~0.01), and ``_full`` (all 62 Privacy-LFW identities; default: the first 10),
``_eot`` (the gradient averaged over 4 random channels per step: 8-bit rounding, JPEG, resizing, blur; ~4x the
cost) and ``_all`` (evaluated on all four real recognisers: dlib ResNet, SFace in onnxruntime, faceres and
mobileface; default: dlib ResNet and SFace), e.g. ``sface_mdfa_full`` or ``faceres_full_all``. Surrogates joined
by ``+`` make an ensemble (each member keeps its own objective, equal weights; every member is also a white-box
target), e.g. ``dlib+faceres_full_all`` — the mask SFace never saw.

Cost on the 2-core CPU machine (16 steps, idle machine: ~10 s per identity with the dlib surrogate, ~12 s with
SFace; evaluation: clean features once per target, ~3 min for dlib and ~4 min for SFace/onnxruntime, then
~30 s per method): ``:dlib`` (10 identities) ~3 min + evaluation; ``:dlib_full`` (62) 10-11 min + evaluation
(measured for every method in docs/results: 615-685 s of generation); ``:sface_full`` 10-13 min
(588-760 s measured for all six methods); ``_mdfa`` (100 steps, momentum + DFANet): with dlib ~7x those,
4,180-4,442 s measured (all five methods of docs/results), with SFace 11,231-12,186 s (~3.1-3.4 h, ~180-200 s per
identity alone) measured (all five methods).
"""

import ml_collections

SURROGATES = {"dlib": "dlib_resnet", "sface": "sface", "faceres": "faceres", "mobileface": "mobileface"}
# The target that is the surrogate itself (its white-box column): SFace's original runs in onnxruntime.
SURROGATE_TARGETS = {"sface": "sface_onnx"}
ALL_TARGETS = "dlib_resnet,sface_onnx,faceres,mobileface"  # every real recogniser with weights at hand


def base_config() -> ml_collections.ConfigDict:
  """Paper defaults: ε = 8, step 1, 16 steps, 10 training images per identity; Privacy-LFW."""
  config = ml_collections.ConfigDict()
  config.methods = "opom-convex"
  config.surrogate = "dlib_resnet"  # or several, comma-separated: an ensemble (each member its own objective)
  config.ensemble_weights = ""  # for an ensemble: one weight per member, comma-separated; "" = equal
  config.targets = "dlib_resnet,sface_onnx"
  config.epsilon = 8.0
  config.step_size = 1.0
  config.steps = 16
  config.momentum = 0.0  # 0: plain signed gradient; > 0: decay μ of Eq. 14
  config.dropout = 0.0  # DFANet dropout rate (Eq. 15); 0 disables it
  # DFANet: the clean features once, without dropout (one forward pass less a step, the same protection within
  # noise: docs/performance.md); False recomputes them under dropout every step, as the official code (_mdfa).
  config.dfanet_clean_once = True
  config.lower = 0.0  # reduced convex hull bounds (opom-convex)
  config.upper = 1.0
  config.warmup_center_steps = 5  # opom-convex: class-centre steps before the hull (the official --nter)
  config.solver = "osqp"  # opom-convex: QP solver of the hull coefficients ("osqp" or "fista")
  config.eot = ""  # expectation over transformation: e.g. "jpeg,resize,blur" (opomjax.core.transfer); "" = off
  config.eot_samples = 4  # random channel draws per step under EOT (each one forward + backward)
  config.eot_rounding = "ste"  # gradient of the 8-bit rounding under EOT: "ste" or "cubic"
  # Transfer techniques (opomjax.generate_masks; docs/experiments.md "Transfer techniques"), each off by default:
  config.ti_width = 1  # TI: odd width of the Gaussian kernel smoothing the gradient; 1 = off
  config.vmi_samples = 0  # VMI: gradients drawn around the mask per step (each one forward + backward); 0 = off
  config.vmi_beta = 1.5  # VMI: radius around the mask in units of epsilon
  config.di_probability = 0.0  # DI: probability of a random shrink and shift of the masked images; 0 = off
  config.photometric_probability = 0.0  # probability of a random contrast (+-20 %) and brightness change; 0 = off
  config.si_copies = 1  # SI: gradient averaged over x / 2^i, i < si_copies (each one forward + backward); 1 = off
  config.ssa_rho = 0.0  # SSA: DCT coefficients rescaled in [1 - rho, 1 + rho] after noise sigma = epsilon; 0 = off
  config.input_samples = 1  # random draws of DI / SSA per step without EOT (with EOT: eot_samples)
  config.mask_cell = 1  # low-frequency mask: a grid of mask_cell x mask_cell-pixel cells upsampled; 1 = off
  config.mid_feature_weight = 0.0  # weight of the intermediate-feature distortion in each objective; 0 = off
  config.mid_feature_depth = 0.5  # its activation, as a relative depth among the recorded ones (0.5 = middle)
  config.fill_budget = False  # after the last step every mask value moved to +-epsilon in its own direction
  config.start_scale = 1.0  # the random start's range as a fraction of epsilon; 0 = the steps start from zero
  # Intermediate-level attack: the workdir of one method's earlier masks (e.g. runs/x/opom-convex-dlib_resnet); the
  # term becomes the projection onto the change they make, starting from them. "" = off.
  config.mid_feature_guide = ""
  config.seed = 0
  config.allow_large_epsilon = False  # epsilon above 32 (0-255 units) is refused unless this is True
  config.allow_random_weights = False  # surrogates/targets without real weights are refused unless True
  config.group_size = 8  # identities vmapped together
  config.parallel = "none"  # or "pmap" / "shard_map": spread each group over the local devices
  config.eval_batch_size = 64
  # What the probe goes through before a target embeds it (opomjax.faces.channel): "none" = saved as an 8-bit
  # photo; also jpeg90, jpeg75, jpeg50, resize0.5, blur, and "float" (unrounded, for comparison). Comma-separated.
  config.conditions = "none"
  # How photo_png / photo_jpeg75 put the mask into each photo (opomjax.faces.apply_mask_to_photo): "sign" (the
  # protect tool's way for masks made on chips), "fit" (least squares) or "sampled".
  config.photo_insertion = "sign"
  config.feature_cache = ""  # default: <workdir>/features
  config.distributed = False  # multi-host: jax.distributed.initialize()
  config.coordinator_address = ""  # only for hand-started processes (e.g. two on localhost)
  config.num_processes = 1
  config.process_id = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "privacy_lfw"
  config.dataset.lfw_dir = ""  # default: $OPOMJAX_LFW_DIR, else ../shared/datasets/lfw-deepfunneled
  config.dataset.download = False  # True: download LFW when it is not found (never without asking)
  config.dataset.data_dir = ""  # prepared chips; default: $OPOMJAX_DATA_DIR or ~/.cache/opomjax
  config.dataset.num_identities = 10  # 0: all 62 Privacy-LFW identities
  config.dataset.images_per_split = 2  # synthetic data set only
  return config


def method_config(methods: str, arg: str = "dlib") -> ml_collections.ConfigDict:
  """The config of one paper-table row: ``methods`` with the variant ``arg`` (see module docstring)."""
  parts = arg.split("_") if arg else ["dlib"]
  members = parts[0].split("+")
  if not all(m in SURROGATES for m in members) or len(set(members)) != len(members):
    raise ValueError(f"config variant {arg!r} must start with one of {sorted(SURROGATES)}, or several joined "
                     "by '+' (an ensemble)")
  unknown = set(parts[1:]) - {"mdfa", "full", "all", "eot"}
  if unknown:
    raise ValueError(f"unknown config variant part(s) {sorted(unknown)} in {arg!r}")
  config = base_config()
  config.methods = methods
  config.surrogate = ",".join(SURROGATES[m] for m in members)
  if "all" in parts:
    config.targets = ALL_TARGETS
  for name in config.surrogate.split(","):
    own_target = SURROGATE_TARGETS.get(name, name)
    if own_target not in config.targets.split(","):
      config.targets += "," + own_target
  if "mdfa" in parts:
    config.steps = 100
    config.momentum = 1.0
    # The paper's rate 0.1 is for residual IR-50s. SFace is a plain chain of 27 convolutions where dropout
    # compounds: at 0.1 its dropped-out embeddings are near chance (cosine 0.23 to the clean ones), at 0.02 0.87.
    config.dropout = 0.02 if "sface" in config.surrogate.split(",") else 0.1
    config.dfanet_clean_once = False  # the official code's DFANet, as Tables 4-5 and their records were made
  if "eot" in parts:
    config.eot = "none,jpeg,resize,blur"
  if "full" in parts:
    config.dataset.num_identities = 0
  return config
