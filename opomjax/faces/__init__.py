"""opomjax.faces."""
