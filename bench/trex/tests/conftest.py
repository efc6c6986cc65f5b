"""Fixtures the TRex tests share: capo-bench traffic exports, made once per run."""

import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from rig import capo_bin  # noqa: E402


def export(tmp_path_factory, workload):
    d = tmp_path_factory.mktemp(workload)
    subprocess.run([capo_bin("capo-bench"), "traffic", "--workload", workload, "--small",
                    "--export", str(d)], check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    return export(tmp_path_factory, "w-k8s")


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return export(tmp_path_factory, "w-large")
