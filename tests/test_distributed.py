"""Data-parallel statistics under torchrun (heterogui.distributed, docs/architecture.md).

Two processes on gloo (127.0.0.1 only) must end with the statistics one process computes on the
whole data: the feature moments, the layer CKA and the BatchNorm re-estimate (pinned channels
kept); and ``torchrun -m heterogui merge`` must write the merge one process writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from heterogui import distributed
from heterogui.align.cka import CKAAccumulator
from heterogui.align.similarity import layer_similarity
from heterogui.cli import main
from heterogui.errors import ConfigError
from heterogui.fusion.bn import BN_TYPES, reestimate_batch_norm
from heterogui.zip.collect import collect_moments
from tests.conftest import SAME_ARCH, make

PAIR = "tiny-digits-vgg-depth"  # VGGs with BatchNorm; B is deeper: A gets identity layers
ENV = {
    "OMP_NUM_THREADS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# merged weights and BatchNorm statistics: |two processes - one| <= TOL * max|one| per tensor
# (measured: 0 for the weights, under 2e-7 for BN statistics, float32 averages in another order)
TOL = 1e-5
# the same with least-squares fusion, whose regressions amplify the rounding of the summed
# statistics (measured: 1.05e-5 on the tiny VGG pair's weights)
LEAST_SQUARES_TOL = 1e-4


def _batches() -> list[torch.Tensor]:
    """Five batches (two for rank 1, three for rank 0), the last one smaller."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, 1, 8, 8, generator=gen) for n in (16, 16, 16, 16, 8)]


def _nets():
    config, _ = SAME_ARCH["resnet"]
    return make(config, 0), make(config, 1)


def _pinned(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    name = next(n for n, m in module.named_modules() if isinstance(m, BN_TYPES))
    return {name: torch.tensor([0, 2], dtype=torch.int64)}


def _statistics(batches) -> dict[str, torch.Tensor]:
    """Run the three data passes on ``batches``; return their results as flat tensors."""
    net_a, net_b = _nets()
    out: dict[str, torch.Tensor] = {}
    # the float64 sums themselves (not compacted), to check that the reduction adds them exactly
    for (space, block), m in collect_moments((net_a, net_b), batches, compact=False).items():
        out[f"moments/{space}/{block}/total"] = m.total
        out[f"moments/{space}/{block}/outer"] = m.outer
        out[f"moments/{space}/{block}/count"] = torch.tensor(m.count)
        out[f"moments/{space}/{block}/corr"] = m.corr()
    out["cka"] = layer_similarity(net_a, net_b, batches)
    module = net_a.module
    reestimate_batch_norm(module, batches, pinned=_pinned(module))
    for key, value in module.state_dict().items():
        if "running_" in key or "num_batches" in key:
            out[f"bn/{key}"] = value.clone()
    return out


def _worker(rank: int, world: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world
    )
    try:
        assert distributed.world_size() == world and distributed.rank() == rank
        out = _statistics(distributed.shard(_batches()))
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_shard_takes_every_nth_batch_and_refuses_too_few():
    batches = list(range(7))
    assert distributed.shard(batches) == batches  # one process: all of them
    assert distributed.shard(batches, 0, 3) == [0, 3, 6]
    assert distributed.shard(batches, 2, 3) == [2, 5]
    with pytest.raises(ConfigError) as err:
        distributed.shard([0, 1], 0, 3)
    message = str(err.value)
    assert "\n" not in message and "2 calibration batches" in message and "3 processes" in message
    assert "more calibration data" in message and "fewer processes" in message


def test_without_a_process_group_nothing_is_reduced(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env("cpu")
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    x = torch.arange(3.0)
    assert distributed.all_reduce_sum_(x) is x and torch.equal(x, torch.arange(3.0))
    acc = CKAAccumulator()
    acc.all_reduce()  # no batches, no group: nothing to do
    assert acc.batches == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init_from_env("cpu")
    assert not torch.distributed.is_initialized()


def test_two_processes_end_with_the_whole_data_statistics(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    whole = _statistics(_batches())
    # each rank's own sums, without a process group: the reduction must add exactly these
    alone = [_statistics(distributed.shard(_batches(), r, 2)) for r in range(2)]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert set(ranks[0]) == set(ranks[1]) == set(whole)
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # every rank holds the same numbers
    for key, expected in whole.items():
        got = ranks[0][key]
        if key.endswith(("count", "num_batches_tracked")):
            assert torch.equal(got, expected), key
        elif key.endswith(("total", "outer")):  # the sums: exactly the two ranks' sums
            assert torch.equal(got, alone[0][key] + alone[1][key]), key
        elif key.endswith("corr"):  # float32 batch products (zip.stats) summed in another order
            assert torch.allclose(got, expected, rtol=0, atol=1e-4), key
        elif key == "cka":  # float64 sums throughout
            assert torch.allclose(got, expected, rtol=0, atol=1e-12), key
        else:  # BN: float32 cumulative averages, weighted by batch counts
            assert torch.allclose(got, expected, rtol=0, atol=TOL * expected.abs().max()), key
    name, idx = next(iter(_pinned(_nets()[0].module).items()))
    kept = _nets()[0].module.get_submodule(name)
    for stat in ("running_mean", "running_var"):  # pinned channels keep their statistics
        assert torch.equal(ranks[0][f"bn/{name}.{stat}"][idx], getattr(kept, stat)[idx])
    assert int(ranks[0]["bn/" + name + ".num_batches_tracked"]) == 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(recipe: Path, out: Path, procs: int = 2) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "heterogui",
        "merge",
        str(recipe),
        "-o",
        str(out),
        "--threads",
        "1",
    ]
    env = {**os.environ, **ENV}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _recipe(
    tmp_path: Path, name: str, size: int, batch_size: int, fusion: str = "auto", pair: str = PAIR
) -> Path:
    recipe = {
        "model_a": {"path": f"zoo:{pair}/a"},
        "model_b": {"path": f"zoo:{pair}/b"},
        "calibration": {"source": "digits", "size": size, "batch_size": batch_size},
        "zip": {"rho": 0.5, "fusion": fusion},
        "device": "cpu",
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("pair", "fusion", "tol"),
    [
        (PAIR, "average", TOL),
        (PAIR, "auto", LEAST_SQUARES_TOL),  # "auto": least squares for the VGG pair
        ("tiny-digits-vgg-width", "average", TOL),  # equal depth: CKA and moments in one pass
    ],
)
def test_torchrun_merge_writes_the_single_process_merge_once(tmp_path, capsys, pair, fusion, tol):
    recipe = _recipe(tmp_path, "recipe.yaml", 96, 16, fusion, pair)  # 6 batches, 3 per process
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["merge", str(recipe), "-o", str(one)]) == 0  # also builds the pair if needed
    capsys.readouterr()
    done = _torchrun(recipe, two)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and done.stdout.count('"parameters"') == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "recipe.yaml", "two"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key, value in w1.items():
        if not value.is_floating_point():
            assert torch.equal(value, w2[key]), key
            continue
        diff = (w2[key].double() - value.double()).abs().max()
        assert diff <= tol * max(value.abs().max().item(), 1.0), (key, float(diff))
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    one_pass = pair != PAIR  # the passes each run took, from its report's stages
    for report in (r1, r2):
        assert ("prepare.analysis" in report["timings_seconds"]) == one_pass
        assert ("prepare.features" in report["timings_seconds"]) != one_pass
    assert r1["widths"] == r2["widths"] and r1["parameters"] == r2["parameters"]
    assert r1["alignment"]["mapping"] == r2["alignment"]["mapping"]
    assert r2["alignment"]["score"] == pytest.approx(r1["alignment"]["score"], rel=1e-6)
    y1, y2 = (yaml.safe_load((d / "recipe.yaml").read_text()) for d in (one, two))
    assert y1 == y2  # the whole data's hash and count, the same alignment and knobs
    assert y1["zip"]["fusion"] == ("average" if fusion == "average" else "least_squares")
    # The sums split by process: the card's rerun command repeats the run it describes.
    assert (r1["processes"], r2["processes"]) == (1, 2)
    threads = f"--threads {r2['torch_threads']}"
    card_one, card_two = ((d / "README.md").read_text() for d in (one, two))
    assert f"`heterogui merge recipe.yaml --out OUT --threads {r1['torch_threads']}`" in card_one
    assert f"`torchrun --nproc_per_node 2 -m heterogui merge recipe.yaml --out OUT {threads}`" in (
        card_two
    )


def test_torchrun_searches_the_heads_on_the_whole_data(tmp_path, capsys):
    # each process scores the flips on its shard; the sums are added, so every process keeps
    # the heads one process keeps on all the data (and the processes stay in step)
    recipe = _recipe(tmp_path, "recipe.yaml", 96, 16, "average", "tiny-digits-vit-depth")
    data = yaml.safe_load(recipe.read_text())
    data["zip"]["heads"] = "search"
    recipe.write_text(yaml.safe_dump(data))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["merge", str(recipe), "-o", str(one)]) == 0
    capsys.readouterr()
    done = _torchrun(recipe, two)
    assert done.returncode == 0, done.stderr[-3000:]
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for key, value in w1.items():
        diff = (w2[key].double() - value.double()).abs().max()
        assert diff <= TOL * max(value.abs().max().item(), 1.0), (key, float(diff))


def test_torchrun_refuses_fewer_batches_than_processes(tmp_path):
    recipe = _recipe(tmp_path, "small.yaml", 16, 16)  # one batch
    done = _torchrun(recipe, tmp_path / "out")
    assert done.returncode != 0
    said = (
        "1 calibration batch cannot be shared by 2 processes: give more calibration "
        "data (calibration.size, or a smaller calibration.batch_size) or start fewer "
        "processes (torchrun --nproc_per_node)"
    )
    # every process meets it; which one says it before torchrun stops the others is a race
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error")]
    assert lines and all(ln.endswith(f": {said}") for ln in lines if "terminated" not in ln)
    assert any(ln.endswith(f": {said}") for ln in lines), done.stderr[-2000:]
    assert not (tmp_path / "out").exists() and done.stdout == ""


def test_a_world_size_without_torchrun_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    recipe = _recipe(tmp_path, "recipe.yaml", 32, 16)
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # left over in a shell, say
    assert main(["merge", str(recipe), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: WORLD_SIZE=2 is set but not RANK, MASTER_ADDR, MASTER_PORT: start the command "
        "with torchrun (it sets them all), or unset WORLD_SIZE\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_process_whose_peers_never_start_stops_in_one_line(tmp_path, capsys, monkeypatch):
    recipe = _recipe(tmp_path, "recipe.yaml", 32, 16)
    port = _free_port()
    # a shell with torchrun's variables left over: process 0 of 2, and no process 1 ever
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(distributed, "JOIN_TIMEOUT", timedelta(seconds=2))
    assert main(["merge", str(recipe), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: the 2 processes of this torchrun did not all join at 127.0.0.1:{port} within 2 s ("
    )
    assert err.endswith(
        "): start every process with torchrun, or unset WORLD_SIZE, RANK, MASTER_ADDR and "
        "MASTER_PORT to merge in one process\n"
    )
    assert err.count("\n") == 1 and not distributed.torch.distributed.is_initialized()
    assert not (tmp_path / "out").exists()


def test_a_collective_a_stopped_peer_broke_is_one_line(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    closed = "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    stopped = r"another process of this torchrun stopped .*pair.cc"
    with pytest.raises(ConfigError, match=stopped), distributed.peers_alive():
        raise RuntimeError(closed)
    # not a peer's: passes unchanged
    with pytest.raises(RuntimeError, match="shape"), distributed.peers_alive():
        raise RuntimeError("shape mismatch")


def test_torchrun_refuses_processes_that_merge_different_recipes(tmp_path):
    recipe = _recipe(tmp_path, "recipe.yaml", 64, 16)
    other = yaml.safe_load(recipe.read_text())
    other["calibration"]["seed"] = 7  # another draw of the data on process 1
    (tmp_path / "seed7.yaml").write_text(yaml.safe_dump(other))
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys\n"
        "from heterogui.cli import main\n"
        "recipe = sys.argv[1] if os.environ['LOCAL_RANK'] == '0' else sys.argv[2]\n"
        "sys.exit(main(['merge', recipe, '-o', sys.argv[3], '--threads', '1']))\n"
    )
    out = tmp_path / "out"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port())),
        *(str(script), str(recipe), str(tmp_path / "seed7.yaml"), str(out)),
    ]
    env = {**os.environ, **ENV}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    said = "process 1's calibration data, recipe.calibration differ from process 0's: give every"
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error") and said in ln]
    assert lines, done.stderr[-2000:]  # each process says it, in one line
    assert not out.exists()
