"""The GPU benchmark script must keep running: its tiny CPU variant exercises every code path it times."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from workflow_helpers import REPO


@pytest.mark.slow  # about a minute or more of CPU: the slow tier, not the quick loop
def test_sd_throughput_tiny_run_writes_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_throughput.py"), "--size", "tiny",
                             "--device", "cpu", "--out", str(out), "--steps", "1", "--warmup", "1",
                             "--gen-steps", "2", "--gen-images", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    text = json.dumps(report)
    assert "OOM" not in text and '"error"' not in text
    assert "| Fine-tuning |" in result.stdout and "| Generation |" in result.stdout


@pytest.mark.slow  # about a minute or more of CPU: the slow tier, not the quick loop
def test_trigger_survival_reports_the_error_inside_and_outside_each_trigger(tmp_path):
    from bibaddiff.data import ImageDataset, write_dataset
    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion

    model = write_tiny_stable_diffusion(tmp_path / "tiny-sd", image_size=16)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    write_dataset(tmp_path / "images", ImageDataset(images, np.arange(6) % 2, ["a", "b"]))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trigger_survival.py"), "--pretrained",
                             str(model), "--images", str(tmp_path / "images"),
                             "--trigger", 'white={"type": "patch", "pattern": "white", "size": 4}',
                             "--trigger", 'none={"type": "relabel"}'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| white |")]
    assert len(rows) == 1 and "| none |" not in result.stdout
    share, inside, outside = (float(cell.strip().rstrip("%")) for cell in rows[0].strip("|").split("|")[1:])
    # A 4x4 square of a 16x16 image, where random pixels are almost never already white.
    assert abs(share - 6.2) < 0.2 and 0 <= inside <= 255 and 0 <= outside <= 255


def test_trigger_survival_without_a_trigger_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trigger_survival.py"), "--pretrained",
                             str(tmp_path), "--images", str(tmp_path / "missing")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_planning_time_prints_one_row_per_try_with_the_job_count():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "planning_time.py"),
                             str(REPO / "tests" / "configs" / "tiny.yaml"), "--tries", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-1].split("|")
    jobs, wall, cpu, rss = int(row[3]), float(row[4]), float(row[5]), float(row[6])
    assert jobs > 10 and wall > 0 and cpu > 0 and rss > 50


def test_rule_memory_folder_has_imagenettes_layout_and_its_config_validates(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import rule_memory

    from bibaddiff.config import load_schema, validate_config

    assert sum(rule_memory.split_counts(rule_memory.TRAIN_IMAGES, 10)) == 9469
    # 100 training images: the published FCT fine-tunes in batches of 100 images of the screened set.
    rule_memory.write_folder(tmp_path / "images", train_images=100, heldout_images=20)
    for split, total in (("train", 100), ("val", 20)):
        classes = sorted((tmp_path / "images" / split).iterdir())
        assert [c.name for c in classes] == rule_memory.WNIDS
        assert sum(len(list(c.glob("*.JPEG"))) for c in classes) == total
    config = validate_config(rule_memory.benchmark_config(tmp_path / "images", "cpu"),
                             load_schema())
    assert config["dataset"]["image_size"] == 256 and config["defenses"]["enabled"]
    assert config["replication"]["duplicate_poisoning"]["enabled"]
    sd = validate_config(rule_memory.stable_diffusion_config(tmp_path / "images", "cpu"),
                         load_schema())
    assert sd["diffusion"]["kind"] == "stable_diffusion" and sd["dataset"] == config["dataset"]
    assert sd["experiment"] != config["experiment"]


def test_rule_memory_reads_the_peak_each_job_logged(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import rule_memory

    from bibaddiff.utils import PEAK_MEMORY_PREFIX

    logs = tmp_path / "results" / "logs" / "poison"
    logs.mkdir(parents=True)
    (logs / "a.log").write_text(f"poisoned 10 images\n{PEAK_MEMORY_PREFIX} 812 MB\n")
    (logs / "b.log").write_text(f"{PEAK_MEMORY_PREFIX} 1200 MB\n")
    (logs / "c.log").write_text("error: killed before the end\n")
    bench = tmp_path / "results" / "benchmarks" / "poison"
    bench.mkdir(parents=True)
    (bench / "a.tsv").write_text("s\th:m:s\tmax_rss\n3.1\t0:00:03\t640.5\n")
    # A generate job's log lies below its model's folders (logs/generate/<stage>/train-<d>/seed<k>_...).
    nested = tmp_path / "results" / "logs" / "generate" / "clean-0123456789ab" / "train-0123456789ab"
    nested.mkdir(parents=True)
    (nested / "seed0_gen-0123456789ab.log").write_text(f"{PEAK_MEMORY_PREFIX} 300 MB\n")
    assert rule_memory.collect(tmp_path / "results") == {
        "poison": {"jobs": 3, "peak_mb": 1200.0, "sampled_max_rss_mb": 640.5},
        "generate": {"jobs": 1, "peak_mb": 300.0, "sampled_max_rss_mb": None}}


def test_script_startup_times_the_imports_of_adapters_that_need_no_torch(tmp_path):
    out = tmp_path / "startup.json"
    light = ["summarize", "provenance", "generate", "poison", "prepare_data"]
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "script_startup.py"), "--tries", "1",
                             "--out", str(out), "--scripts", *light], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scripts = json.loads(out.read_text())["scripts"]
    assert set(scripts) == set(light) and "| generate |" in result.stdout
    # The summaries never need torch, and generation loads it only when a cell is to be made.
    assert all("torch" not in row["loads"] for row in scripts.values())
    unknown = subprocess.run([sys.executable, str(REPO / "benchmarks" / "script_startup.py"), "--scripts", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode != 0 and "no adapter named nope" in unknown.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    """The GPU check's tiny CPU run (minutes): every part reports ok, and one JSON and one Markdown file hold it."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--size",
                             "tiny", "--out-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
                             # On a busy 2-core machine the parts take longer than the GPU budget allows.
                             "--budget-s", "1500"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    [json_file] = (tmp_path / "out").glob("gpu_check_*_cpu_tiny.json")
    report = json.loads(json_file.read_text())
    markdown = json_file.with_suffix(".md").read_text()
    parts = report["parts"]
    assert set(parts) == {"training_speed_digits", "training_speed_cifar10", "sampling_precision",
                          "accelerate_one_process", "tiny_dag", "sd_throughput"}
    assert {name: part["status"] for name, part in parts.items()} == {name: "ok" for name in parts}
    assert all(f"| {name} | ok |" in markdown for name in parts)
    env = report["environment"]
    assert env["date"] and env["device"] == "cpu" and env["git_commit"] and env["versions"]["torch"]

    for model in ("digits", "cifar10"):
        speed = parts[f"training_speed_{model}"]
        assert speed["library"]["steps_per_second"] > 0 and speed["bare"]["steps_per_second"] > 0
    # bf16 autocast really ran on the CPU: it changed pixels, while the workflow's own CPU sampler is fp32.
    precision = parts["sampling_precision"]["scales"]
    assert set(precision) == {"1", "11"}
    assert all(row["images"] == 16 and row["library_default_equals"] == "fp32" for row in precision.values())
    assert any(row["images_with_a_changed_pixel"] > 0 for row in precision.values())
    accelerate = parts["accelerate_one_process"]
    assert accelerate["device"] == "cpu" and accelerate["processes"] == 1

    dag = parts["tiny_dag"]
    gpu_rules = {rule: row for rule, row in dag["rules"].items() if row["asks_for_gpu"]}
    assert {"train_diffusion", "generate", "measure", "train_content_judge", "quality"} <= set(gpu_rules)
    # Every job's process was seen, none of them on CUDA with device: cpu.
    assert all(row["processes_recorded"] == row["jobs"] and row["processes_on_cuda"] == 0
               for row in gpu_rules.values())
    assert dag["summary_tables"]["trigger_amplification.csv"] > 0 and dag["training_json_devices"] == ["cpu"]
    variants = parts["sd_throughput"]["report"]["results"]
    assert len(variants) == 6 and all(row["status"] == "ok" for row in variants.values())


@pytest.mark.parametrize("overlay", sorted((REPO / "configs" / "samplers").glob("*.yaml")), ids=lambda path: path.stem)
def test_each_shipped_sampler_variant_keeps_the_guidance_studys_models(overlay, monkeypatch):
    """configs/samplers/*.yaml layered on the guidance study: a valid config of its own experiment, with the study's
    models, and cells that pair with the study's own."""
    import importlib.util

    from bibaddiff.plan import Plan

    spec = importlib.util.spec_from_file_location("compare_samplers", REPO / "benchmarks" / "compare_samplers.py")
    compare_samplers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_samplers)
    monkeypatch.chdir(REPO)
    study = REPO / "configs" / "guidance-digits.yaml"
    base, variant = Plan(compare_samplers.load_config([study])), Plan(compare_samplers.load_config([study, overlay]))
    assert variant.experiment != base.experiment and variant.sampling_id != base.sampling_id
    assert [variant.model_name(*model) for model in variant.models()] == [base.model_name(*m) for m in base.models()]
    assert {float(cell.guidance) for cell in compare_samplers.paired_cells(base, variant, None)} == {1.0, 11.0}


def _class_fidelity_inputs(tmp_path, heldout_names=("a", "b", "c")):
    """A tiny 3-class DDPM, a content judge that calls every image class "a", and a held-out set of 6 images."""
    import torch

    from bibaddiff.data import ImageDataset, write_dataset
    from bibaddiff.diffusion.base import ModelInfo
    from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model
    from bibaddiff.judges import SmallCNN, save_judge

    torch.manual_seed(0)
    unet = build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4)
    save_model(tmp_path / "model", unet, build_scheduler(), ModelInfo(3, ["a", "b", "c"], 8, 1))
    judge = SmallCNN(1, 3).eval()
    with torch.no_grad():
        judge.head.weight.zero_()
        judge.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    save_judge(tmp_path / "judge", judge, {"kind": "content", "architecture": "small_cnn", "channels": 1,
                                           "num_outputs": 3, "image_size": 8, "class_names": ["a", "b", "c"]})
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    write_dataset(tmp_path / "heldout", ImageDataset(images, np.arange(6) % 3, list(heldout_names),
                                                     manifest={"source": "test"}))
    return ["--model", str(tmp_path / "model"), "--judge", str(tmp_path / "judge"), "--heldout",
            str(tmp_path / "heldout"), "--images-per-class", "4", "--ddim-steps", "2", "--batch-size", "4"]


def test_class_fidelity_reads_the_judge_on_real_and_generated_images_of_each_class(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "class_fidelity.py"),
                             *_class_fidelity_inputs(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    # The judge calls everything "a": it recognises every real and generated "a", and no "b" or "c".
    assert rows == ["| a | 100.0% | 100.0% |  |", "| b | 0.0% | 0.0% | a 100% |", "| c | 0.0% | 0.0% | a 100% |"]
    # stdout is the table alone, so that it can be pasted; the generation's progress goes to stderr
    assert "wrote" not in result.stdout and "wrote" in result.stderr


def test_class_fidelity_with_a_judge_of_other_classes_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "class_fidelity.py"),
                             *_class_fidelity_inputs(tmp_path, heldout_names=("x", "y", "z"))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "are not the judge's" in result.stderr


def test_rule_memory_checks_a_runs_peaks_against_the_profiles_first_try(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import rule_memory

    from bibaddiff.utils import PEAK_MEMORY_PREFIX

    requests = rule_memory.profile_requests(REPO / "profiles" / "slurm" / "config.yaml")
    assert requests["default"] == 4000 and requests["detect_poison"] == 18500 and "cpus_per_task" not in requests
    for folder, rule, peak in (("data", "poison", 7000), ("experiment", "measure", 300), ("experiment", "poison", 100)):
        logs = tmp_path / folder / "logs" / rule
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{peak}.log").write_text(f"{PEAK_MEMORY_PREFIX} {peak} MB\n")
    rule_memory.main(["--out", str(tmp_path / "unused"), "--results", str(tmp_path / "data"), str(tmp_path / "experiment")])
    table = capsys.readouterr().out
    assert "| poison | 2 | 7000 | - | 6500 | NO |" in table and "| measure | 1 | 300 | - | 2000 | yes |" in table
    with pytest.raises(SystemExit, match="no such folder"):
        rule_memory.main(["--out", str(tmp_path), "--results", str(tmp_path / "absent")])
    bad = tmp_path / "profile.yaml"
    bad.write_text("set-resources:\n  poison:\n    mem_mb: 'lots'\n")
    with pytest.raises(SystemExit, match="mem_mb of poison"):
        rule_memory.profile_requests(bad)
