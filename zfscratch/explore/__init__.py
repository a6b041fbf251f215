"""``zfscratch explore``: a local web page to look inside a network live (needs ``zfscratch[explore]``).

:mod:`zfscratch.explore.engine` computes (no web dependency); :mod:`zfscratch.explore.app` is the Flask
app; ``static/`` holds the page (plain HTML, CSS and JavaScript, no external resources).
"""
from zfscratch.explore.engine import Engine, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS

__all__ = ["Engine", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS"]
