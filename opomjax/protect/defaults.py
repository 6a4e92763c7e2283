"""The protect tool's default mask settings, in one place (the command line reads them without loading JAX)."""

#: The models a mask is computed on when none are named.
SURROGATES = ("dlib_resnet",)
#: Ascent steps.
STEPS = 16
