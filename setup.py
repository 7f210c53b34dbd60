"""Build glue: the compiled pieces are shm/_atomics.c and shm/_validate.c, and the
optional C twins of the hot paths, shm/_fragments.c, shm/_writer.c and
tracebus/_speedups.c (shm/native.py: a machine without a compiler installs and
runs on the pure-Python twins). Metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("shm._atomics", ["shm/_atomics.c"], extra_compile_args=["-O2"]),
        Extension("shm._validate", ["shm/_validate.c"], extra_compile_args=["-O2"]),
        Extension(
            "shm._fragments", ["shm/_fragments.c"], extra_compile_args=["-O2"], optional=True
        ),
        Extension(
            "shm._writer",
            ["shm/_writer.c"],
            depends=["shm/_writer_api.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "tracebus._speedups",
            ["tracebus/_speedups.c"],
            include_dirs=["shm"],
            depends=["shm/_writer_api.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
