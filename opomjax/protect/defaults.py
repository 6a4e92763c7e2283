"""The protect tool's default mask settings, in one place (the command line reads them without loading JAX).

Two presets (docs/results/README.md, "Masks for recognisers they never saw", has the measurements behind them):

- ``transfer`` (the default): the mask is computed on four recognisers of different architectures and training
  at once (dlib's ResNet, SFace, faceres and the small mobileface), with translation-invariant gradient smoothing
  (TI, width 7) and input diversity (DI, probability 0.5), no momentum, 50 steps. Measured on Privacy-LFW (62
  people): at the paper's 16 steps an ensemble of two of the three strong ones protects on average 57 % of the
  Top-1 searches of the third (55 % after JPEG 75): dlib 76 %, faceres 66 %, SFace 30 % (33 % with mobileface as
  a third member), against 15 % of SFace's searches for a mask computed on dlib alone; 50 steps raise the
  hardest case, SFace unseen with dlib + faceres + mobileface, from 33 % to 43 % (41 % after JPEG 75).
- ``fast``: dlib's ResNet alone, the paper's plain 16 steps, the finished mask moved to the budget (every value
  to ±epsilon in its own direction, ``fill_budget``: at 16 steps many values stop inside the box); a fraction of
  the time, and little protection against recognisers other than dlib. On 20 Privacy-LFW people the budget
  filled raises the Top-1 protection of dlib's own searches from 97.4 to 98.4 % and of the unseen faceres's
  from 49.2 to 56.2 % (SFace 11.1 to 14.6 %), at no cost.
"""

PRESETS = {
    "transfer": dict(surrogates=("dlib_resnet", "sface", "faceres", "mobileface"), ti_width=7, di_probability=0.5,
                     steps=50, fill_budget=False),
    "fast": dict(surrogates=("dlib_resnet",), ti_width=1, di_probability=0.0, steps=16, fill_budget=True),
}
PRESET = "transfer"

#: The models a mask is computed on when none are named.
SURROGATES = PRESETS[PRESET]["surrogates"]
#: TI's kernel width and DI's probability when not given.
TI_WIDTH = PRESETS[PRESET]["ti_width"]
DI_PROBABILITY = PRESETS[PRESET]["di_probability"]
#: Ascent steps when not given (the paper's are 16; the ``transfer`` preset takes 50).
STEPS = PRESETS[PRESET]["steps"]
#: Whether the finished mask is moved to the budget when not said (:func:`opomjax.core.transfer.fill_budget`).
FILL_BUDGET = PRESETS[PRESET]["fill_budget"]
