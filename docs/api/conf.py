"""Sphinx configuration of the API reference, built from the docstrings.

    pip install '.[docs]' && python -m sphinx -W --keep-going -b html docs/api build/docs

autodoc imports pysmpc: the installed package, or this tree with
PYTHONPATH set to the repository root. tests/test_docs.py builds it with
warnings as errors and checks that every public name has an entry.
"""

project = "pysmpc"
author = "the pysmpc authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]

# The docstrings are Google style ("Args:", "Returns:", "Raises:") and plain prose.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
# pysmpc.fl.flower subclasses Flower's FedAvg: the reference is built without Flower's ~30 packages.
autodoc_mock_imports = ["flwr"]
# Type hints name classes of other packages (numpy.ndarray, torch.nn.Module); the
# reference is read offline, so they are shown as written, not linked.
nitpicky = False

html_theme = "alabaster"
html_title = "pysmpc API reference"
html_static_path: list = []
exclude_patterns = ["_build"]
