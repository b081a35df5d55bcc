"""ArtifactPublic does no I/O: whether a GGUF has its Ollama Modelfile is looked up by the router (one
stat per GGUF, for a whole listing at once) and handed to the schema."""

from __future__ import annotations

from fastapi.testclient import TestClient

from appliance.api.schemas import ArtifactPublic
from appliance.bootstrap import Runtime
from appliance.db.engine import write_session
from appliance.db.tables import Artifact
from appliance.jobs.exports import with_modelfile


def _record(runtime: Runtime, art_id: str, kind: str, modelfile: bool) -> Artifact:
    folder = runtime.paths.artifact_dir(art_id)
    folder.mkdir(parents=True)
    (folder / "m.q8_0.gguf").write_bytes(b"GGUF")
    if modelfile:
        (folder / "Modelfile").write_text("FROM ./m.q8_0.gguf\n")
    art = Artifact(id=art_id, kind=kind, type="q8_0", status="ready", path=f"artifacts/{art_id}/m.q8_0.gguf", size=4)
    with write_session(runtime.engine) as session:
        session.add(art)
    return art


def test_modelfile_is_looked_up_by_the_router_not_the_schema(client: TestClient, runtime: Runtime) -> None:
    arts = [_record(runtime, "art_with", "gguf", True), _record(runtime, "art_without", "gguf", False),
            _record(runtime, "art_adapter", "gguf-adapter", True)]  # only a whole-model GGUF has one
    assert with_modelfile(paths=runtime.paths, arts=arts) == {"art_with"}
    listed = {a["id"]: (a["modelfile"], a["file"]) for a in client.get("/api/artifacts").json()}
    assert listed == {"art_with": (True, "m.q8_0.gguf"), "art_without": (False, "m.q8_0.gguf"),
                      "art_adapter": (False, "m.q8_0.gguf")}
    assert client.get("/api/artifacts/art_with").json()["modelfile"] is True
    # The schema states what it is told: the Modelfile is on disk, but it is not looked for.
    assert ArtifactPublic.of(arts[0]).modelfile is False
    assert ArtifactPublic.of(arts[0], modelfile=True).model_dump() == client.get("/api/artifacts/art_with").json() \
        | {"created_at": arts[0].created_at, "finished_at": None}
    (runtime.paths.artifact_dir("art_with") / "Modelfile").unlink()
    assert client.get("/api/artifacts/art_with").json()["modelfile"] is False
