"""The hpatk command line: version, help, plugins and registry listings, errors."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import invoke
from hpatk.cli.main import cli
from hpatk.core import __version__


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"hpatk, version {__version__}"


def test_registry_backbones_lists_the_papers():
    r = invoke("registry", "backbones")
    assert r.exit_code == 0
    for name in ("inceptionv4", "inceptionv3", "vgg16", "resnet50", "resnet101",
                 "densenet121", "xception", "timm:*"):
        assert name in r.output


def test_registry_pattern_and_json():
    r = invoke("registry", "enhancers", "cla*", "--json")
    assert r.exit_code == 0
    assert [e["name"] for e in json.loads(r.output)] == ["clahe"]


def test_registry_bad_kind_is_usage_error():
    r = CliRunner().invoke(cli, ["registry", "widgets"])
    assert r.exit_code == 2 and "widgets" in r.output


def test_plugins_json_fields():
    r = invoke("plugins", "--format", "json")
    rows = json.loads(r.output)
    assert {"name", "dist", "version", "hooks", "status"} <= set(rows[0])
