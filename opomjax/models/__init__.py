"""opomjax.models."""
