"""The alert rules and the dashboard, checked offline: promtool validates the rules and runs
their unit tests (each alert fires on the series that should fire it), every dashboard query
parses as PromQL, and every chat_* metric they name is one the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # make test-deps installs Debian's prometheus


def rules_file(tmp_path: Path) -> Path:
    rule = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alert_rules_are_valid_and_fire_when_they_should(tmp_path):
    rules_file(tmp_path)
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    shutil.copy(MONITORING / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    records = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_queries())]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    assert f"SUCCESS: {len(records)} rules found" in promtool("check", "rules", "queries.yaml", cwd=tmp_path)


def exported_metrics() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("shared/*.py"), *ROOT.glob("*/*.py")]:
        names |= set(re.findall(r'"(chat_[a-z_]+)"', path.read_text()))
    return names


def test_rules_and_dashboard_name_only_metrics_the_code_exports(tmp_path):
    exported = exported_metrics()
    text = rules_file(tmp_path).read_text() + "\n".join(dashboard_queries())
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for name in re.findall(r"\b(chat_[a-z_]+)", text)}
    assert used and used <= exported, used - exported
