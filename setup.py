"""With EDGEGW_MYPYC=1, the wheel carries the request path compiled with mypyc (the modules
listed in src/edgegw/compiled.py); otherwise it is the plain-Python package. Everything else is
in pyproject.toml."""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("EDGEGW_MYPYC") == "1":
    from mypyc.build import mypycify

    compiled = runpy.run_path(os.path.join("src", "edgegw", "compiled.py"))
    ext_modules = mypycify([os.path.relpath(compiled["source"](m)) for m in compiled["MODULES"]],
                           opt_level="3", group_name="edgegw.compiled")

setup(ext_modules=ext_modules)
