"""opomjax.core."""
