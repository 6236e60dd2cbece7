"""Helpers the test suite shares: a throwaway JupyterLab server for browser tests."""
from hsbs_lib.testing.jupyterlab import JupyterLabServer, running_jupyterlab

__all__ = ["JupyterLabServer", "running_jupyterlab"]
