"""The compiled part of the build: `metergate.wire.fastwire`, the hot records' reader and writer.

The module is plain Python (libs/metergate/wire/fastwire.py) that Cython compiles with the C types
declared beside it (fastwire.pxd); everything else of the package is in pyproject.toml.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("metergate.wire.fastwire", ["libs/metergate/wire/fastwire.py"])],
        # the .pxd declares the C types; the .py annotations stay for readers and mypy
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
)
