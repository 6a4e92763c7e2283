"""The protect tool's default mask settings, in one place (the command line reads them without loading JAX).

Two presets (docs/results/README.md, "Masks for recognisers they never saw", has the measurements behind them):

- ``transfer`` (the default): the mask is computed on four recognisers of different architectures and training
  at once (dlib's ResNet, SFace, faceres and the small mobileface), with translation-invariant gradient smoothing
  (TI, width 7) and input diversity (DI, probability 0.5), no momentum, 50 steps from a zero mask (no random
  start, ``start_scale=0``), the finished mask moved to the budget (``fill_budget``). Measured on Privacy-LFW (62
  people) by leaving each strong model out of the ensemble in turn: the unseen one fails to identify the masked
  photo in 68.8 % of its Top-1 searches on average (67.4 % after JPEG 75): dlib 84.9 %, faceres 77.4 %, SFace
  44.0 %, against 15 % of SFace's searches for a mask computed on dlib alone. The zero start and the filled budget
  add 1.0 point to that mean at no cost (67.8 % with the paper's random start and the mask left where the steps
  end).
- ``fast``: dlib's ResNet alone, the paper's plain 16 steps, the finished mask moved to the budget (every value
  to ±epsilon in its own direction, ``fill_budget``: at 16 steps many values stop inside the box); a fraction of
  the time, and little protection against recognisers other than dlib. On 20 Privacy-LFW people the budget
  filled raises the Top-1 protection of dlib's own searches from 97.4 to 98.4 % and of the unseen faceres's
  from 49.2 to 56.2 % (SFace 11.1 to 14.6 %), at no cost.
"""

PRESETS = {
    "transfer": dict(surrogates=("dlib_resnet", "sface", "faceres", "mobileface"), ti_width=7, di_probability=0.5,
                     steps=50, start_scale=0.0, fill_budget=True),
    "fast": dict(surrogates=("dlib_resnet",), ti_width=1, di_probability=0.0, steps=16, start_scale=1.0,
                 fill_budget=True),
}
PRESET = "transfer"

#: The models a mask is computed on when none are named.
SURROGATES = PRESETS[PRESET]["surrogates"]
#: TI's kernel width and DI's probability when not given.
TI_WIDTH = PRESETS[PRESET]["ti_width"]
DI_PROBABILITY = PRESETS[PRESET]["di_probability"]
#: Ascent steps when not given (the paper's are 16; the ``transfer`` preset takes 50).
STEPS = PRESETS[PRESET]["steps"]
#: The random start's range as a fraction of epsilon when not given (0: the steps start from a zero mask).
START_SCALE = PRESETS[PRESET]["start_scale"]
#: Whether the finished mask is moved to the budget when not said (:func:`opomjax.core.transfer.fill_budget`).
FILL_BUDGET = PRESETS[PRESET]["fill_budget"]
