# All metadata lives in setup.cfg; this file keeps `pip install -e .` working with older pips.
from setuptools import setup

setup()
