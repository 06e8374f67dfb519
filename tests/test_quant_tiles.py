"""The prefill tilings of the quantized products (model/kernels/quant_tiles.py): the measured
table holds only tilings the kernels accept, `quant_tiling` reads it by M bucket, and every
tiling of benchmarks/quant_tiles.py's sweep computes the dequantizing reference's product.

Interpreter mode runs each tiling the interpreter can tell apart (warps and stages do not
change what it computes) on M, N and K of two to three tiles, partial last tiles included.
FP8 tensor-core tilings are held to FP8_DOT_TOLERANCE on the GPU; the interpreter's e4m3
conversion drops the carry of a mantissa rounding up into the exponent (127.8 becomes 64),
which about doubles the activations' quantization error there, hence its looser bound."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from kernel_cases import relative_error
from kernel_modes import TOLERANCE
from test_quant_kernels import FP8_DOT_TOLERANCE, fp8_case, reference

from jupyter_qwen.model.kernels import quant_tiles
from jupyter_qwen.model.kernels.quant_tiles import (
    AWQ_VIA_BF16_MIN_M,
    DEFAULT_LARGE_M,
    LARGE_M_TILES,
    M_BUCKETS,
    QuantTiling,
    tiling_problem,
)
from jupyter_qwen.model.quant import awq, fp8

INTERPRETER_FP8_DOT_TOLERANCE = 1e-1


def sweep_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quant_tiles.py"
    spec = importlib.util.spec_from_file_location("quant_tiles_sweep", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SWEEP = sweep_module()
GRIDS = {"fp8": SWEEP.fp8_grid(), "awq": SWEEP.awq_grid()}


def distinct_to_the_interpreter(tilings: list[QuantTiling]) -> list[QuantTiling]:
    return list(dict.fromkeys(replace(t, num_warps=4, num_stages=1) for t in tilings))


def test_table_defaults_and_sweep_grids_hold_valid_tilings():
    for fmt, tiling in DEFAULT_LARGE_M.items():
        assert tiling_problem(fmt, tiling) is None, (fmt, tiling)
    for (fmt, bucket, n, k), tiling in LARGE_M_TILES.items():
        assert fmt in DEFAULT_LARGE_M and bucket in M_BUCKETS and n > 0 and k > 0
        assert tiling_problem(fmt, tiling) is None, (fmt, bucket, n, k, tiling)
    for fmt, tilings in GRIDS.items():
        assert tilings[0] == DEFAULT_LARGE_M[fmt], "the sweep times today's default first"
        assert len(set(tilings)) == len(tilings)
        for tiling in tilings:
            assert tiling_problem(fmt, tiling) is None, (fmt, tiling)


@pytest.mark.parametrize("fmt, tiling", [
    ("fp8", QuantTiling(64, 128, 64)),  # FP8 tensor cores quantize 128 columns at a time
    ("fp8", QuantTiling(64, 128, 256, fp8_dot=False)),
    ("awq", QuantTiling(64, 100, 64)),
    ("awq", QuantTiling(64, 128, 64, quantize_x=True)),
    ("fp8", QuantTiling(48, 128, 128)),
    ("fp8", QuantTiling(64, 128, 128, group_m=0)),
    ("fp8", QuantTiling(128, 256, 128, chain=True)),  # two scale rows in one N tile
    ("fp8", QuantTiling(64, 128, 128, quantize_x=True, chain=True)),
    ("fp8", QuantTiling(64, 128, 128, fp8_dot=False, chain=True)),
    ("awq", QuantTiling(64, 128, 64, chain=True)),
    ("fp8", QuantTiling(64, 128, 128, promote_k=128)),  # promotes only a chain
    ("fp8", QuantTiling(64, 128, 128, chain=True, promote_k=96)),
    ("fp8", QuantTiling(64, 128, 128, tile_scale=True)),  # needs x quantized beforehand
    ("fp8", QuantTiling(64, 256, 128, quantize_x=True, tile_scale=True)),  # two scale rows
    ("fp8", QuantTiling(64, 256, 128, fp8_dot=False, swap_ab=True)),  # two scale rows
    ("fp8", QuantTiling(64, 128, 64, fp8_dot=False, swap_ab=True)),  # half a scale block
    ("fp8", QuantTiling(64, 128, 128, quantize_x=True, swap_ab=True)),
    ("fp8", QuantTiling(64, 128, 128, split_k=0)),
    ("awq", QuantTiling(64, 128, 64, swap_ab=True, split_k=2)),
    ("fp8", QuantTiling(64, 128, 128, fp8_dot=False, swap_ab=True, split_k=2)),
    ("fp8", QuantTiling(64, 128, 128, 4, 3, quantize_x=True, wgmma=True, split_k=2)),
])
def test_tiling_problem_names_what_the_kernels_refuse(fmt, tiling):
    assert tiling_problem(fmt, tiling) is not None


def test_quant_tiling_reads_the_table_by_m_bucket(monkeypatch):
    from jupyter_qwen.model.kernels.quant_linear import quant_tiling

    picked = QuantTiling(128, 256, 128, 8, 3, group_m=8, quantize_x=True)
    monkeypatch.setattr(quant_tiles, "LARGE_M_TILES", {("fp8", 512, 4096, 1024): picked})
    assert [quant_tiling(m, 4096, k=1024) for m in (257, 400, 512)] == [picked] * 3
    for m in (256, 513, 100000):
        assert quant_tiling(m, 4096, k=1024) == DEFAULT_LARGE_M["fp8"]
    assert quant_tiling(400, 4096, awq=True, k=1024) == DEFAULT_LARGE_M["awq"]
    assert quant_tiling(400, 4096, k=2048) == DEFAULT_LARGE_M["fp8"]
    assert quant_tiling(16, 4096, k=1024).block_m == 16  # decode tilings are not the table's
    assert quant_tiles.bucket_rows(1024) == [257, 512]
    assert quant_tiles.bucket_rows(300) == [257, 300]
    assert quant_tiles.bucket_rows(256) == []
    assert quant_tiles.m_bucket(10**6) == M_BUCKETS[-1]


def case_size(tiling: QuantTiling) -> tuple[int, int, int]:
    """M, N, K: two M tiles and a partial third, two N tiles and a partial third (whole
    AWQ words), and a partial last K step."""
    return 2 * tiling.block_m + 5, 2 * tiling.block_n + 24, 2 * tiling.block_k + 64


def sweep_tilings(mode, fmt: str, tiling: QuantTiling) -> list[QuantTiling]:
    """On the GPU, every tiling of the sweep that computes as `tiling` does; else itself."""
    if not mode.large:
        return [tiling]
    return [t for t in GRIDS[fmt] if distinct_to_the_interpreter([t]) == [tiling]]


def fp8_dot_tolerance(mode) -> float:
    return FP8_DOT_TOLERANCE if mode.large else INTERPRETER_FP8_DOT_TOLERANCE


@pytest.mark.parametrize("computation", distinct_to_the_interpreter(GRIDS["fp8"]), ids=SWEEP.label)
def test_every_fp8_sweep_tiling_matches_the_reference(mode, generator, computation):
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    for tiling in sweep_tilings(mode, "fp8", computation):
        m, n, k = case_size(tiling)
        values, scales, scale_rows = (t.to(mode.device) for t in fp8_case(generator, n, k))
        weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
        x = torch.randn(m, k, generator=generator).to(torch.bfloat16).to(mode.device)
        y = fp8_linear(x, values, scales, scale_rows, tiling=tiling, fp8_dot=True,
                       shard_sizes=[n])
        bound = fp8_dot_tolerance(mode) if tiling.fp8_dot else TOLERANCE[torch.bfloat16]
        error = relative_error(y.float().cpu(), reference(x, weight).float().cpu())
        assert error < bound, f"{tiling}: relative error {error:.2e}"
        if tiling.quantize_x:  # the same arithmetic as quantizing inside the K loop
            inline = fp8_linear(x, values, scales, scale_rows,
                                tiling=replace(tiling, quantize_x=False), fp8_dot=True)
            assert relative_error(y.float().cpu(), inline.float().cpu()) < 1e-3


@pytest.mark.parametrize("computation", distinct_to_the_interpreter(GRIDS["awq"]), ids=SWEEP.label)
def test_every_awq_sweep_tiling_matches_the_reference(mode, generator, computation):
    from jupyter_qwen.model.kernels.quant_linear import awq_linear

    for tiling in sweep_tilings(mode, "awq", computation):
        m, n, k = case_size(tiling)
        packed = awq.quantize_awq(torch.randn(n, k, generator=generator))
        weight = awq.dequantize_awq(*packed)
        x = torch.randn(m, k, generator=generator).to(torch.bfloat16)
        y = awq_linear(x.to(mode.device), *(t.to(mode.device) for t in packed), tiling=tiling)
        error = relative_error(y.float().cpu(), reference(x, weight).float())
        assert error < TOLERANCE[torch.bfloat16], f"{tiling}: relative error {error:.2e}"


@pytest.mark.parametrize("tiling", [QuantTiling(32, 64, 128, group_m=2, quantize_x=True),
                                    QuantTiling(32, 64, 128, group_m=2, chain=True)],
                         ids=SWEEP.label)
def test_fp8_tensor_core_tilings_fall_back_without_fp8_tensor_cores(mode, generator, tiling):
    """fp8_dot=False (a card without e4m3): a tensor-core tiling upcasts W instead, to the
    bf16 product's accuracy."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    m, n, k = case_size(tiling)
    values, scales, scale_rows = (t.to(mode.device) for t in fp8_case(generator, n, k))
    weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
    x = torch.randn(m, k, generator=generator).to(torch.bfloat16).to(mode.device)
    y = fp8_linear(x, values, scales, scale_rows, tiling=tiling, fp8_dot=False,
                   shard_sizes=[n])
    error = relative_error(y.float().cpu(), reference(x, weight).float().cpu())
    assert error < TOLERANCE[torch.bfloat16], f"relative error {error:.2e}"


def test_chain_runs_only_where_each_n_tile_reads_one_scale_row():
    from jupyter_qwen.model.kernels.quant_linear import chains

    chained = QuantTiling(64, 64, 128, chain=True)
    assert chains(chained, [200]) and chains(chained, (128, 64, 64))
    assert not chains(chained, None)  # shards unknown: the scale rows cannot be checked
    assert not chains(chained, [96, 32])  # the second shard starts inside an N tile
    assert not chains(QuantTiling(64, 64, 128), [200])
    assert not chains(QuantTiling(64, 256, 128, chain=True), [512])


def scale_contrast_case(generator, shards: list[int], k: int):
    """x [37, k] and an FP8 projection of two shards whose scales differ 1000-fold, each
    quantized on its own: (x, values, scales, scale_rows, the dequantized weight)."""
    w = torch.cat([torch.randn(rows, k, generator=generator) * magnitude
                   for rows, magnitude in zip(shards, (1.0, 1e3), strict=True)])
    pieces = [fp8.quantize_fp8_blocks(part) for part in w.split(shards)]
    values = torch.cat([v for v, _ in pieces])
    scales = torch.cat([s for _, s in pieces])
    scale_rows = fp8.scale_rows_of(shards)
    weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
    x = torch.randn(37, k, generator=generator).to(torch.bfloat16)
    return x, values, scales, scale_rows, weight


def test_swap_ab_reads_one_scale_row_only_where_the_shards_allow(mode, generator):
    """As tile_scale: shards whose scales differ 1000-fold, one straddling the N tiles
    (48 + 80 rows) and one not (64 + 64); the swapped product where each tile reads one
    scale row, the plain one elsewhere, both the reference's product to bf16 accuracy."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, swaps

    tiling = QuantTiling(16, 32, 128, fp8_dot=False, swap_ab=True)
    k = 320
    for shards in ([48, 80], [64, 64]):
        assert swaps(tiling, shards) == (shards == [64, 64])
        x, values, scales, scale_rows, weight = scale_contrast_case(generator, shards, k)
        y = fp8_linear(*(t.to(mode.device) for t in (x, values, scales, scale_rows)),
                       tiling=tiling, shard_sizes=shards)
        expected = reference(x, weight).float()
        for rows in (slice(0, shards[0]), slice(shards[0], None)):
            error = relative_error(y.float().cpu()[:, rows], expected[:, rows])
            assert error < TOLERANCE[torch.bfloat16], (shards, rows, error)


def outlier_case(shards: list[int]):
    """Rows of x with one entry of 2^20 (times a zero weight) in the first 128 columns and
    ones in the next 128, and a W of ones there (each block's scale 1/448): y = 128."""
    n, k = sum(shards), 256
    w = torch.zeros(n, k)
    w[:, 1] = 1.0
    w[:, 128:] = 1.0
    pieces = [fp8.quantize_fp8_blocks(w[:rows]) for rows in shards]
    values = torch.cat([v for v, _ in pieces])
    scales = torch.cat([s for _, s in pieces])
    x = torch.zeros(5, k)
    x[:, 0] = 2.0 ** 20
    x[:, 128:] = 1.0
    return x.to(torch.bfloat16), values, scales, fp8.scale_rows_of(shards)


def test_chain_falls_back_where_the_shards_split_an_n_tile(mode):
    """One e4m3 scale per row over all of K (chain): ones 2^20 below the row's largest
    value flush to zero, y = 0; with q, k, v shards that put two scale rows in one N tile
    the product runs per 128 columns as without chain, and keeps y = 128."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    tiling = QuantTiling(32, 32, 128, chain=True)
    for shards, expected in (([48, 16], 128.0), ([64], 0.0)):
        x, values, scales, scale_rows = (t.to(mode.device) for t in outlier_case(shards))
        y = fp8_linear(x, values, scales, scale_rows, tiling=tiling, fp8_dot=True,
                       shard_sizes=shards)
        assert torch.allclose(y.float().cpu(), torch.full_like(y.float().cpu(), expected)), \
            (shards, y[0, :4])


def test_tile_scale_reads_one_scale_row_only_where_the_shards_allow(mode, generator):
    """q / k / v-like shards whose scales differ 1000-fold: where a shard starts inside an
    N tile (48 + 80 rows, 32-row tiles) the product keeps a scale per row; where tiles
    never straddle shards (64 + 64) it takes one scale row a tile. Both match the
    reference (a tile scaled by the wrong shard's row would be off ~1000x)."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, one_scale_row

    tiling = QuantTiling(32, 32, 128, quantize_x=True, tile_scale=True)
    k = 320
    for shards in ([48, 80], [64, 64]):
        assert one_scale_row(tiling.block_n, shards) == (shards == [64, 64])
        x, values, scales, scale_rows, weight = scale_contrast_case(generator, shards, k)
        y = fp8_linear(*(t.to(mode.device) for t in (x, values, scales, scale_rows)),
                       tiling=tiling, fp8_dot=True, shard_sizes=shards)
        expected = reference(x, weight).float()
        for rows in (slice(0, shards[0]), slice(shards[0], None)):  # each shard on its own
            error = relative_error(y.float().cpu()[:, rows], expected[:, rows])
            assert error < fp8_dot_tolerance(mode), (shards, rows, error)


WGMMA_TILINGS = [t for t in GRIDS["fp8"] if t.wgmma]


@pytest.mark.parametrize("tiling", WGMMA_TILINGS, ids=SWEEP.label)
def test_wgmma_tilings_compute_what_the_triton_kernel_does(mode, generator, tiling):
    """A `wgmma` tiling on shards whose scales differ 1000-fold (256 + 64 rows: a partial
    last N tile), M with a partial last tile, K of 8 steps (whole chunks of 4 or 8) and of 6
    (not a multiple of the chunk: the Triton kernel takes over). On a Hopper GPU
    `fp8_wgmma.py` runs and must give the `tile_scale` Triton kernel's products (the same
    arithmetic) and the reference's to FP8 accuracy; elsewhere (the interpreter, other
    GPUs) the tiling runs as without `wgmma`."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, hopper, runs_wgmma

    shards = [256, 64]
    triton_tiling = replace(tiling, wgmma=False, wgmma_chunk=4, tile_scale=True)
    for k in (1024, 768):
        x, values, scales, scale_rows, weight = scale_contrast_case(generator, shards, k)
        x = torch.cat([x] * 4)[: 2 * tiling.block_m + 5]
        device = torch.device(mode.device)
        runs = runs_wgmma(tiling, shards, values.to(device))
        assert runs == (k % (tiling.wgmma_chunk * 128) == 0 and hopper(device))
        operands = [t.to(device) for t in (x, values, scales, scale_rows)]
        y = fp8_linear(*operands, tiling=tiling, fp8_dot=True, shard_sizes=shards).float()
        y_triton = fp8_linear(*operands, tiling=triton_tiling, fp8_dot=True,
                              shard_sizes=shards).float()
        expected = reference(x, weight).float()
        for rows in (slice(0, shards[0]), slice(shards[0], None)):  # each shard on its own
            error = relative_error(y.cpu()[:, rows], expected[:, rows])
            assert error < fp8_dot_tolerance(mode), (k, rows, error)
            same = relative_error(y.cpu()[:, rows], y_triton.cpu()[:, rows])
            assert same < 1e-3, (k, rows, same)


@pytest.mark.parametrize("tiling", WGMMA_TILINGS[:1], ids=SWEEP.label)
def test_wgmma_products_replay_from_a_cuda_graph(mode, generator, tiling):
    """Decode steps of up to 256 rows replay captured graphs: the kernel's TMA descriptors
    are made at capture, so a replay must read the static input's new values (and the
    activation scratch the capture allocated), giving the eager product's bits."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, hopper

    if mode.device != "cuda" or not hopper(torch.device("cuda")):
        pytest.skip("the Gluon kernel runs on a Hopper GPU only")
    shards, k = [256, 64], 1024
    _, values, scales, scale_rows, _ = scale_contrast_case(generator, shards, k)
    operands = [t.cuda() for t in (values, scales, scale_rows)]
    static_x = torch.zeros(2 * tiling.block_m + 5, k, dtype=torch.bfloat16, device="cuda")

    def run():
        return fp8_linear(static_x, *operands, tiling=tiling, fp8_dot=True, shard_sizes=shards)

    run()  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()
    for trial in range(2):
        fresh = torch.randn(static_x.shape, generator=generator).to(torch.bfloat16)
        static_x.copy_(fresh.cuda())
        graph.replay()
        assert torch.equal(static_y, run()), trial


def test_every_sweep_tiling_prints_as_source_that_reads_back():
    for tilings in GRIDS.values():
        for tiling in tilings:
            assert eval(SWEEP.tiling_source(tiling), {"QuantTiling": QuantTiling}) == tiling


def synthetic_points(ms_of, m: int = 512) -> list[dict]:
    """Sweep records for both models' projections at M rows: bf16 1 ms each; each format's
    grid timed by ms_of(fmt, index)."""
    points = []
    for model, projections in SWEEP.SHAPES.items():
        for name, (n, k) in projections.items():
            formats = {fmt: [{"tiling": asdict(t), "label": SWEEP.label(t), "error": 0.0,
                              "ms": ms_of(fmt, index)} for index, t in enumerate(tilings)]
                       for fmt, tilings in GRIDS.items()}
            points.append({"model": model, "projection": name, "n": n, "k": k, "m": m,
                           "bf16_ms": 1.0, "formats": formats, "late": False})
    return points


def test_the_sweep_prints_a_table_literal_that_quant_tiles_reads():
    """The last tiling of each grid wins by 10 % (past --min-gain): the printed literal names
    it for every shape (AWQ only in buckets below its dequantized-copy threshold), evaluates
    to QuantTilings the kernels accept, and nothing beats the default by 1 % when min_gain
    is 5 %."""
    def last_wins(fmt, index):
        return 0.9 if index == len(GRIDS[fmt]) - 1 else 1.0

    for m, formats in ((AWQ_VIA_BF16_MIN_M, {"fp8", "awq"}), (512, {"fp8"})):
        points = synthetic_points(last_wins, m)
        literal = "\n".join(SWEEP.table_literal(points, list(GRIDS), min_gain=0.03))
        namespace = {"QuantTiling": QuantTiling}
        exec(literal, namespace)
        table = namespace["LARGE_M_TILES"]
        assert len(table) == len(formats) * len(points)
        for (fmt, bucket, n, k), tiling in table.items():
            assert fmt in formats and tiling == GRIDS[fmt][-1] and bucket == m and (n, k) in [
                (p["n"], p["k"]) for p in points]
    close = synthetic_points(lambda fmt, index: 0.99 if index else 1.0)
    assert "QuantTiling(" not in "\n".join(SWEEP.table_literal(close, list(GRIDS), 0.05))


def test_the_sweep_applies_its_measured_entries_to_the_table_source(tmp_path, monkeypatch):
    """`--apply` on a copy of quant_tiles.py: a measured key whose winner beats the default
    takes it (replacing the old line), a measured key where the default stays loses its
    line, an entry not measured is kept; the file still imports, and M values that are not
    buckets are refused."""
    path = tmp_path / "quant_tiles.py"
    path.write_text(Path(quant_tiles.__file__).read_text())
    qkv_06b, o_06b = SWEEP.SHAPES["0.6B"]["qkv"], SWEEP.SHAPES["0.6B"]["o"]
    old_qkv, old_o = (LARGE_M_TILES[("fp8", 256, *shape)] for shape in (qkv_06b, o_06b))
    kept = {key: tiling for key, tiling in LARGE_M_TILES.items() if key[1] != 256}
    assert kept and old_qkv and old_o

    def wins(point, fmt, index):  # the last tiling wins everywhere but the 0.6B o product
        if (point["n"], point["k"]) == o_06b:
            return 1.0 if index else 0.9
        return 0.9 if index == len(GRIDS[fmt]) - 1 else 1.0

    points = synthetic_points(lambda fmt, index: 1.0, 256)
    for point in points:
        for fmt, records in point["formats"].items():
            for index, record in enumerate(records):
                record["ms"] = wins(point, fmt, index)
    written, dropped = SWEEP.apply_table(points, ["fp8"], 0.03, path)
    spec = importlib.util.spec_from_file_location("applied_tiles", path)
    applied = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, applied)  # dataclasses look it up there
    spec.loader.exec_module(applied)
    table = {key: QuantTiling(**asdict(t)) for key, t in applied.LARGE_M_TILES.items()}
    assert written == len(points) - 1 and dropped == 1
    assert table[("fp8", 256, *qkv_06b)] == GRIDS["fp8"][-1] != old_qkv
    assert ("fp8", 256, *o_06b) not in table  # the default won there
    assert {key: table[key] for key in kept} == kept
    assert all(key in table for key in LARGE_M_TILES if key[0] == "awq")
    with pytest.raises(SystemExit, match="M buckets"):
        SWEEP.apply_table(synthetic_points(lambda fmt, index: 1.0, 300), ["fp8"], 0.03, path)


def test_the_layer_table_sums_the_four_projections():
    points = synthetic_points(lambda fmt, index: 0.5 if fmt == "fp8" else 2.0 + index)
    lines = SWEEP.layer_table(points, ["fp8", "awq"])
    assert len(lines) == 1 + len(SWEEP.SHAPES)
    for line in lines[1:]:
        _model, m, bf16, fp8_us, fp8_x, fp8_default, awq_us, awq_x, awq_default = line.split()
        assert (m, float(bf16), float(fp8_us), float(awq_us)) == ("512", 4000.0, 2000.0, 8000.0)
        assert (fp8_x, fp8_default, awq_x, awq_default) == ("2.00", "2.00", "0.50", "0.50")


def start_up_steps(monkeypatch, max_num_batched_tokens: int, max_model_len: int,
                   max_num_seqs: int) -> list[tuple[list[int], list[int]]]:
    """The (query_lens, context_lens) of a quantized model's start-up compile steps."""
    from types import SimpleNamespace

    from jupyter_qwen.engine.model_runner import COMPILE_STEPS, ModelRunner

    steps = [(list(q), list(c)) for q, c in COMPILE_STEPS]
    runner = SimpleNamespace(max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=max_model_len,
                             config=SimpleNamespace(max_num_seqs=max_num_seqs),
                             _dummy_step=lambda q, c: steps.append((q, c)))
    ModelRunner._compile_quant_tilings(runner)
    return steps


def test_start_up_reaches_every_m_bucket_the_table_names(monkeypatch):
    """ModelRunner's start-up compile steps include a prefill at both ends of each bucket of
    the table that the scheduler can produce and of the decode tilings' rows, split into
    sequences no longer than max_model_len, and mixed and decode steps of as many rows."""
    monkeypatch.setattr(quant_tiles, "LARGE_M_TILES", {
        ("awq", bucket, 4096, 1024): DEFAULT_LARGE_M["awq"] for bucket in (64, 2048, 8192)})
    steps = start_up_steps(monkeypatch, 4096, 1024, 32)[7:]
    prefills = [q for q, c in steps if q == c]
    assert prefills == [[16], [33], [64], [513], [1024, 1024], [683] * 3, [1024] * 4]
    assert all(max(context_lens) <= 1024 for _, context_lens in steps)
    mixed_64 = [(q, c) for q, c in steps if sum(q) == 64 and len(q) == 2]
    assert mixed_64 == [([63, 1], [63, 40]), ([63, 1], [63, 1024])]
    decodes = [(len(q), c[-1]) for q, c in steps if set(q) == {1}]
    assert decodes == [(16, 40), (16, 1024)]  # 33 and more rows: more than 32 sequences


def step_form(query_lens: list[int]) -> str:
    """Which attention kernels a step runs: a decode step (one row a sequence), a prefill of
    one sequence, or the mixed form (several sequences, one-row ones to the decode kernel)."""
    if set(query_lens) == {1}:
        return "decode"
    return "prefill" if len(query_lens) == 1 else "mixed"


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b"])
@pytest.mark.parametrize("block_scaled", [True, False])
def test_start_up_compiles_every_hand_over_a_step_can_ask_for(monkeypatch, shape, block_scaled):
    """With the table as it is: every (form of step, which of the four FP8 products take
    their rows quantized) that a step of the engine's defaults can meet, start-up meets
    too, so that no norm, SiLU·mul or attention kernel compiles while serving (with or
    without cuBLAS's block-scaled product)."""
    from types import SimpleNamespace

    from jupyter_qwen.config import EngineConfig
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels
    from jupyter_qwen.testing import SHAPES

    config = SHAPES[shape]
    defaults = EngineConfig(model="unused").resolved(config.max_position_embeddings)
    q_width, kv_width = (config.num_attention_heads * config.head_dim,
                         config.num_key_value_heads * config.head_dim)
    hidden, inter = config.hidden_size, config.intermediate_size
    projections = [SimpleNamespace(weight=torch.empty(sum(shards), k, device="meta"),
                                   weight_scale_inv=None, shard_sizes=shards)
                   for shards, k in (([q_width, kv_width, kv_width], hidden),
                                     ([hidden], q_width), ([inter, inter], hidden),
                                     ([hidden], inter))]
    kernels = TritonQuantKernels(torch.device("cpu"))
    kernels.fp8_dot = True  # as on an H100 or H200
    monkeypatch.setattr(kernels, "_block_scaled_works", lambda layer: block_scaled)

    def hand_overs(rows: int) -> tuple[bool, ...]:
        return tuple(kernels.takes_fp8_rows(layer, rows) for layer in projections)

    most, model_len = defaults.max_num_batched_tokens, defaults.max_model_len
    met = set()
    for rows in range(1, most + 1):
        met.add(("prefill", hand_overs(rows)) if rows <= model_len else None)
        met.add(("mixed", hand_overs(rows)) if rows > 1 else None)
        met.add(("decode", hand_overs(rows)) if rows <= defaults.max_num_seqs else None)
    met.discard(None)
    steps = start_up_steps(monkeypatch, most, model_len, defaults.max_num_seqs)
    compiled = {(step_form(q), hand_overs(sum(q))) for q, _ in steps}
    assert met - compiled == set()


def test_only_large_batches_of_whole_scale_blocks_go_to_cublas():
    """`takes_block_scaled`: from BLOCK_SCALED_MIN_M rows, or the rows BLOCK_SCALED_FROM_M
    names for a shape measured otherwise (never for Qwen3-0.6B's qkv, gate_up only from
    8,192), and only where every shard is whole 128-row scale blocks (else the scale rows
    are not the weight's rows // 128)."""
    from types import SimpleNamespace

    from jupyter_qwen.model.kernels.quant_linear import (
        BLOCK_SCALED_MIN_M,
        block_scaled_mm_works,
        takes_block_scaled,
    )

    def layer(shards, k=2560):
        return SimpleNamespace(weight=torch.empty(sum(shards), k), shard_sizes=list(shards))

    whole = layer([4096, 1024, 1024])  # Qwen3-4B's qkv
    assert takes_block_scaled(whole, BLOCK_SCALED_MIN_M)
    assert not takes_block_scaled(whole, BLOCK_SCALED_MIN_M - 1)
    assert not takes_block_scaled(layer([4096 + 64, 1024 - 64]), BLOCK_SCALED_MIN_M)
    assert not takes_block_scaled(layer([1024], k=1000), BLOCK_SCALED_MIN_M)
    assert not takes_block_scaled(layer([2048, 1024, 1024], k=1024), 8192)  # 0.6B qkv
    gate_up = layer([3072, 3072], k=1024)  # 0.6B's
    assert not takes_block_scaled(gate_up, 8191) and takes_block_scaled(gate_up, 8192)
    assert not block_scaled_mm_works(torch.device("cpu"), whole.weight, torch.ones(32, 8))
