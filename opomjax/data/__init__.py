"""opomjax.data."""
