"""Build glue: the compiled pieces are shm/_atomics.c, shm/_validate.c,
shm/_fragments.c and shm/_writer.c (the last two optional: without a compiler
their pure-Python twins stand in). Metadata lives in pyproject.toml."""

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
    ]
)
