"""Interactive explorers for JupyterLab (ipywidgets), each with a static matplotlib fallback; one module
per explorer, the shared widget plumbing in ``widgets``.

- :func:`synthfer_explorer`: expression, intensity, yaw, identity and nuisance controls; the face and
  its four region masks redraw live.
- :func:`attention_explorer`: image, method and layer; the attention overlay and, with SynthFER masks,
  its energy share and pointing-game hit.
- :func:`similarity_explorer`: how rare one class is in a batch; the BSA similarity matrix and what each
  minority sample attends to.
- :func:`confusion_explorer`: one button per confusion-matrix cell; a click shows that cell's faces.

``static=None`` picks the mode: a static Figure when ``SMOKE`` is set (headless notebook runs), when
ipywidgets is missing or when no Jupyter kernel is running; ``static=True`` forces it. Interactive mode
returns an ``ipywidgets.VBox`` with three extra attributes: ``controls`` (name -> widget),
``state`` (what the last redraw showed, as arrays) and ``redraw()``. ``show_explorer(result)`` shows
either kind once in a notebook.
"""
from hsbs_lib.viz.interactive.attention import attention_explorer
from hsbs_lib.viz.interactive.confusion import cell_members, confusion_explorer, most_confused_cell
from hsbs_lib.viz.interactive.similarity import batch_similarity, compose_batch, similarity_explorer
from hsbs_lib.viz.interactive.synthfer import render_controlled_face, synthfer_explorer
from hsbs_lib.viz.interactive.widgets import show_explorer, use_static

__all__ = ["attention_explorer", "batch_similarity", "cell_members", "compose_batch", "confusion_explorer",
           "most_confused_cell", "render_controlled_face", "show_explorer", "similarity_explorer", "synthfer_explorer",
           "use_static"]
