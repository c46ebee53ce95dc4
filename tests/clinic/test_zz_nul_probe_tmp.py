from pathlib import Path
import pytest
from starlette.testclient import TestClient
from clinic.web.app import build_app
from tests.clinic.web_support import seed, web_cfg, write_config
from clinic.cli import main as clinic_main

def test_probe(dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = seed(dsn)
    cfg = write_config(tmp_path / "c.toml", w.dsn, tmp_path)
    assert clinic_main(["--config", str(cfg), "tokens", "create", "doc1"]) == 0
    tok = capsys.readouterr().out.strip().splitlines()[-1]
    c = TestClient(build_app(web_cfg(dsn, tmp_path), w.ring), base_url="https://testserver")
    h = {"authorization": f"Bearer {tok}"}
    for url in ["/fhir/r4/Observation?code=0%00", "/fhir/r4/Observation/a%00b",
                "/fhir/r4/Observation?_offset=2064591068147", "/fhir/r4/Observation?subject=Patient/x%00",
                "/fhir/r4/Observation?date=ge2024%00"]:
        print(url, c.get(url, headers=h).status_code)
