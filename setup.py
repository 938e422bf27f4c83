"""With EDGEGW_MYPYC=1, compiles the request path with mypyc (the modules listed in
edgegw/compiled.py); otherwise builds the plain-Python package. Everything else is in
pyproject.toml."""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("EDGEGW_MYPYC") == "1":
    from mypyc.build import mypycify

    modules = runpy.run_path(os.path.join("edgegw", "compiled.py"))["MODULES"]
    ext_modules = mypycify([m.replace(".", "/") + ".py" for m in modules], opt_level="3",
                           group_name="edgegw.compiled")

setup(ext_modules=ext_modules)
