"""With EDGEGW_MYPYC=1, the wheel carries the request path compiled with mypyc (the modules
listed in src/edgegw/compiled.py), and two cffi bindings, each where its headers are installed:
libnghttp2 (HTTP/2's native codec) and OpenSSL (the downstream TLS transport). Otherwise it is
the plain-Python package. Everything else is in pyproject.toml."""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("EDGEGW_MYPYC") == "1":
    from mypyc.build import mypycify

    compiled = runpy.run_path(os.path.join("src", "edgegw", "compiled.py"))
    ext_modules = mypycify([os.path.relpath(compiled["source"](m)) for m in compiled["MODULES"]],
                           opt_level="3", group_name="edgegw.compiled")
    for header, build in (
            ("nghttp2/nghttp2.h", ("http", "codec", "http2", "nghttp2_build.py")),
            ("openssl/ssl.h", ("tls", "openssl_build.py"))):
        if any(os.path.exists(os.path.join(d, header)) for d in ("/usr/include",
                                                                "/usr/local/include")):
            ffi = runpy.run_path(os.path.join("src", "edgegw", *build))["builder"]()
            ext_modules.append(ffi.distutils_extension(tmpdir=os.path.join("build", "cffi")))

setup(ext_modules=ext_modules)
