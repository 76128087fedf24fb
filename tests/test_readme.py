"""The README's case-file example is a valid case, and its examples exist."""

import pathlib
import re

from y90opt.case import parse_case
from y90opt.nominal import nominal_doses
from y90opt.outcomes import active_rules

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_case_block_parses_and_runs():
    text = (ROOT / "README.md").read_text()
    toml = re.search(r"## The case file.*?```toml\n(.*?)```", text, re.S).group(1)
    case = parse_case(toml, "README.md")
    assert case.plan.site_timezone == "Europe/Paris"
    assert case.correlations and case.rules
    out = nominal_doses(case)
    assert out["dose_gy"]["tumors"]["T1"] > 0
    ar = active_rules(case)
    assert any(r.id == "my-limit" for r in ar.limits)


def test_readme_examples_exist():
    text = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"configs/examples/[\w-]+\.toml", text)):
        assert (ROOT / path).is_file(), path
