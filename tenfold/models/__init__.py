"""The default models: feed recall and ranking, and the effects model, built from a
seeded simulation of a short-video app's logs (``tenfold models build``).

Only ``simulate`` is numpy-only; training needs the ``torch`` extra.
"""
