"""With EDGEGW_MYPYC=1, the wheel carries the request path compiled with mypyc (the modules
listed in src/edgegw/compiled.py), and the binding of libnghttp2 (HTTP/2's native codec) where
its headers are installed; otherwise it is the plain-Python package. Everything else is in
pyproject.toml."""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("EDGEGW_MYPYC") == "1":
    from mypyc.build import mypycify

    compiled = runpy.run_path(os.path.join("src", "edgegw", "compiled.py"))
    ext_modules = mypycify([os.path.relpath(compiled["source"](m)) for m in compiled["MODULES"]],
                           opt_level="3", group_name="edgegw.compiled")
    if any(os.path.exists(os.path.join(d, "nghttp2", "nghttp2.h"))
           for d in ("/usr/include", "/usr/local/include")):
        build = os.path.join("src", "edgegw", "http", "codec", "http2", "nghttp2_build.py")
        ffi = runpy.run_path(build)["builder"]()
        ext_modules.append(ffi.distutils_extension(tmpdir=os.path.join("build", "cffi")))

setup(ext_modules=ext_modules)
