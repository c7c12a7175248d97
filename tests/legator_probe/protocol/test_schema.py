import json
import runpy
from pathlib import Path

import pytest

from legator_probe.protocol import schema
from legator_probe.protocol.messages import wire_json_schema

CONTRACT = Path(__file__).parents[3] / "contracts" / "wire-protocol.schema.json"


def test_committed_contract_matches_the_code() -> None:
    committed = CONTRACT.read_text(encoding="utf-8")
    assert committed == schema.render_wire_schema(), (
        "contracts/wire-protocol.schema.json is stale: "
        "run `python -m legator_probe.protocol.schema > contracts/wire-protocol.schema.json`"
    )
    assert json.loads(committed) == wire_json_schema()


def test_main_writes_the_rendered_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    schema.main()
    assert capsys.readouterr().out == schema.render_wire_schema()


def test_running_the_module_as_a_script_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(schema.__file__, run_name="__main__")
    out = capsys.readouterr().out
    assert out.endswith("}\n")
    assert json.loads(out) == wire_json_schema()
