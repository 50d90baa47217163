"""Which clusters `down --idle/--all` may touch: those our state store recorded creating, never a
name pattern. SkyPilot's cluster list is stood in for (no API server here); the state store is real.
The same on a real Slurm cluster: tests/cloud/test_slurm_e2e.py (`launcher-byhand` survives)."""
from __future__ import annotations

from launcher import sky_api, state, teardown


def test_ours_is_what_we_recorded(launcher_home, monkeypatch):
    listed = [{"name": "launcher-byhand", "status": "UP"}, {"name": "launcher-q-abc123", "status": "UP"},
              {"name": "dev-box", "status": "UP"}]
    monkeypatch.setattr(sky_api, "clusters", lambda names=None: [c for c in listed if names is None or c["name"] in names])
    assert teardown.ours() == []  # nothing recorded: nothing is ours, whatever the names say
    state.save(state.Job(id="q-abc123", name="q", cloud="lambda", spec_yaml="name: q\n", output_dir="/tmp/q",
                         cluster="launcher-q-abc123"))
    assert [c["name"] for c in teardown.ours()] == ["launcher-q-abc123"]
