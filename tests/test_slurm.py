"""The tiny workflow submitted through profiles/slurm to a real SLURM cluster (started by .ci/run).

Skipped when no cluster answers, unless BIBADDIFF_REQUIRE_SLURM=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bibaddiff.utils import FAIL_ONCE_VARIABLE
from workflow_helpers import REPO, planned_jobs, saved_step, snakemake, start_snakemake, wait_for, write_config

# Runs snakemake (a DAG, minutes each): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def cluster_answers() -> str | None:
    """None when a SLURM controller answers with an idle or mixed node, else the reason it does not."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: no SLURM client installed (.ci/run starts a local cluster)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if states.returncode != 0:
        return f"sinfo failed: {states.stderr.strip()}"
    if not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return f"no usable SLURM node (states: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = cluster_answers()
    if reason is not None:
        if os.environ.get("BIBADDIFF_REQUIRE_SLURM") == "1":
            pytest.fail(f"BIBADDIFF_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def shipped_profile() -> dict:
    return yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


def write_profile(folder: Path, profile: dict) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def test_the_shipped_slurm_profile_stops_before_any_submission_naming_each_unfilled_key(tmp_path):
    """Until the partition and account are filled in, even a dry run stops with one line that names them, and
    nothing is planned, let alone submitted."""
    result = snakemake(tmp_path / "work", "-n", "--workflow-profile", str(REPO / "profiles" / "slurm"), check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid profile:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "CHANGE_ME" in errors[0] and "default-resources.slurm_partition" in errors[0]
    assert "default-resources.slurm_account" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr and "Job stats" not in result.stdout + result.stderr

    profile = shipped_profile()
    profile["default-resources"]["slurm_partition"] = "'gpu'"
    result = snakemake(tmp_path / "work", "-n", "--workflow-profile", str(write_profile(tmp_path / "half", profile)),
                       check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid profile:")]
    assert result.returncode != 0 and len(errors) == 1 and "slurm_partition" not in errors[0], result.stderr[-3000:]


def test_the_shipped_slurm_profile_reads_job_states_from_squeue_where_it_is_safe():
    """squeue, unlike sacct, reports a cancelled job in the plain word that the plugin matches. The plugin checks
    job states at most 180 s apart and uses squeue only where SLURM's MinJobAge is at least three times the initial
    interval, so that interval must put the threshold above 180 s, or squeue could forget a finished job between two
    checks and the run would wait for it forever."""
    profile = shipped_profile()
    assert profile["slurm-status-command"] == "squeue"
    assert 3 * profile["slurm-init-seconds-before-status-checks"] > 180


def test_shipped_slurm_profile_shows_gpu_resources(tmp_path):
    """A dry run with the shipped profile, its partition and account filled in: rules that may run on the device ask
    SLURM for a GPU (measurement runs the judges on it), rules that never touch it do not."""
    profile = shipped_profile()
    profile["default-resources"].update(slurm_partition="'gpu'", slurm_account="'lab'")
    config = write_config(tmp_path / "gpu.yaml", device="auto")
    result = snakemake(tmp_path / "work", "-n", "--workflow-profile", str(write_profile(tmp_path / "profile", profile)),
                       configfile=config)
    text = result.stdout
    train = text[text.index("rule train_diffusion:"):]
    train = train[:train.index("\n\n")]
    assert "gpu=1" in train and "runtime=720" in train and "slurm_partition=gpu" in train
    measure = text[text.index("rule measure:"):]
    assert "gpu=1" in measure[:measure.index("\n\n")]
    poison = text[text.index("rule poison:"):]
    assert "gpu=" not in poison[:poison.index("\n\n")]


def local_profile(tmp_path, retries: int = 0) -> Path:
    """The shipped SLURM profile, pointed at the local cluster's partition and account, with small memory requests
    and the first status check after 10 s (the local cluster's MinJobAge of 300 s keeps squeue's answers)."""
    profile = shipped_profile()
    profile["default-resources"]["slurm_partition"] = "'{}'".format(os.environ.get("SLC_PARTITION", "debug"))
    if os.environ.get("SLC_WITH_DBD", "1") == "1":
        profile["default-resources"]["slurm_account"] = "'{}'".format(os.environ.get("SLC_ACCOUNT", "testacct"))
    else:
        del profile["default-resources"]["slurm_account"]
    profile["default-resources"]["mem_mb"] = "1500 * attempt"
    for rule in profile["set-resources"].values():
        rule["mem_mb"] = "1500 * attempt"
    profile.update({"jobs": 4, "latency-wait": 5, "retries": retries, "slurm-init-seconds-before-status-checks": 10})
    return write_profile(tmp_path / "profile", profile)


def running_slurm_jobs(rule: str, wildcard: str) -> list[str]:
    """Ids of the running SLURM jobs of ``rule`` whose wildcards include ``wildcard`` (the plugin's job comment is
    rule_<name>_wildcards_<values>)."""
    listed = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True, text=True,
                            timeout=30).stdout
    return [line.split()[0] for line in listed.splitlines() if f"rule_{rule}_" in line and wildcard in line]


def slurm_state(job: str) -> str:
    return subprocess.run(["sacct", "-X", "-n", "--parsable2", "-o", "State", "-j", job], capture_output=True,
                          text=True, timeout=30).stdout.strip()


# Two jobs; the first sleeps on its first attempt until it is cancelled. Each writes the attempt that finished it.
SLEEPER_SNAKEFILE = """
rule all:
    input: expand("done/{name}.txt", name=["cancelled", "untouched"])

rule sleeper:
    output: "done/{name}.txt"
    resources:
        seconds=lambda wildcards, attempt: 900 if wildcards.name == "cancelled" and attempt == 1 else 5,
        tries=lambda wildcards, attempt: attempt,
    shell: "sleep {resources.seconds} && echo {resources.tries} > {output}"
"""


@pytest.mark.slow
def test_a_cancelled_job_fails_and_is_resubmitted_without_anyone_stepping_in(slurm_cluster, tmp_path):
    """A running job cancelled with scancel, under the shipped profile's status settings: the SLURM plugin reports it
    failed and Snakemake resubmits it (retries: 1), so the run finishes by itself. With sacct as the status command
    the run would wait forever: sacct says "CANCELLED by <uid>", which is not among the plugin's failure states."""
    workdir = tmp_path / "sleeper"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(SLEEPER_SNAKEFILE)
    profile = local_profile(tmp_path, retries=1)
    limit = 300
    command = ["timeout", "-k", "10", str(limit), str(Path(sys.executable).parent / "snakemake"), "--directory",
               str(workdir), "--snakefile", str(workdir / "Snakefile"), "--workflow-profile", str(profile),
               "--cores", "1"]
    started = time.perf_counter()
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    found: list[str] = []

    def the_job_to_cancel_runs() -> bool:
        found.extend(running_slurm_jobs("sleeper", "cancelled"))
        return bool(found)

    wait_for(the_job_to_cancel_runs, "the job to cancel to run", run, timeout=120)
    subprocess.run(["scancel", found[0]], check=True, timeout=30)
    cancelled_at = time.perf_counter()
    output, _ = run.communicate(timeout=limit + 60)
    ended = time.perf_counter()
    print(f"cancelled after {cancelled_at - started:.0f} s; the run ended {ended - cancelled_at:.0f} s later "
          f"(exit {run.returncode})")
    assert run.returncode == 0, f"the run did not finish by itself within {limit} s:\n{output[-4000:]}"
    assert f"SLURM-job '{found[0]}' failed, SLURM status is: 'CANCELLED'" in output, output[-4000:]
    assert "Falling back to 'sacct'" not in output, "the plugin did not use squeue: the test shows nothing"
    assert (workdir / "done" / "cancelled.txt").read_text().strip() == "2"
    assert (workdir / "done" / "untouched.txt").read_text().strip() == "1"
    if os.environ.get("SLC_WITH_DBD", "1") == "1":
        # What the plugin would have read with sacct, and not matched.
        assert slurm_state(found[0]).startswith("CANCELLED by "), slurm_state(found[0])


def test_tiny_workflow_runs_through_slurm_and_survives_a_failed_and_a_cancelled_job(slurm_cluster, tmp_path):
    """The tiny DAG through the shipped profile (one retry, small resources), with two faults on the way. The first
    measure job fails (BIBADDIFF_FAIL_ONCE) and is retried with twice the memory. A training job is cancelled with
    scancel once it has saved a state; the profile's squeue status check reports it failed, it is resubmitted and
    resumes from its state, and the run finishes without anyone stepping in."""
    profile = local_profile(tmp_path, retries=1)
    # device auto: GPU rules are submitted with --gpus=1 to the cluster's (fake) GPU and fall back to the CPU.
    config = write_config(tmp_path / "slurm.yaml", device="auto", generation__guidance_scales=[1],
                          generation__x0_clipping="none", generation__other_conditions=[], defenses__enabled=False,
                          replication__enabled=False, quality__enabled=False, diffusion__training__steps=300,
                          diffusion__training__checkpoint_every=20)
    workdir, marker = tmp_path / "work", tmp_path / "measure-failed-once"
    fault = {FAIL_ONCE_VARIABLE: f"measure:{marker}"}
    started = time.perf_counter()
    run = start_snakemake(workdir, "--workflow-profile", str(profile), configfile=config, env=fault)
    states = workdir / "results" / "tiny" / "models"
    found: list[tuple[str, list[str]]] = []

    def running_training_with_a_state() -> bool:
        """A training job that is still running and has saved a state (on a busy machine one model may finish
        before the other starts, and a finished model keeps its state folder)."""
        for state in states.glob("*/train-*/seed0.state"):
            jobs = running_slurm_jobs("train_diffusion", state.parent.parent.name) if saved_step(state) >= 20 else []
            if jobs:
                found.append((state.parent.parent.name, jobs))
                return True
        return False

    wait_for(running_training_with_a_state, "a running training job saved its state", run, timeout=600)
    stage, cancelled = found[0]
    subprocess.run(["scancel", *cancelled], check=True, timeout=30)
    cancelled_at = time.perf_counter()
    try:
        output, _ = run.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError("the run did not end within 900 s of the cancellation") from None
    print(f"the run ended {time.perf_counter() - cancelled_at:.0f} s after the cancellation")
    elapsed = time.perf_counter() - started
    print(f"tiny workflow through SLURM, with a failed and a cancelled job: {elapsed:.0f} s")
    assert run.returncode == 0, output[-4000:]
    assert f"SLURM-job '{cancelled[0]}' failed, SLURM status is: 'CANCELLED'" in output, output[-4000:]

    table = pd.read_csv(workdir / "results/experiments/tiny/summary/trigger_amplification.csv")
    assert set(table.attack) == {"patch-p0.1", "clean"}
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    submitted = {path.name for path in slurm_logs.iterdir()}
    # Generation and measurement of a model are one submission (the profile's group "model").
    assert {"rule_train_diffusion", "group_model_generate_measure", "rule_prepare_data"} <= submitted, submitted
    assert planned_jobs(snakemake(workdir, "-n", configfile=config)) == {}

    # The failed measure job ran again, asking for the second attempt's memory.
    assert marker.exists()
    measure_memory = re.findall(r"rule measure:.*?resources: [^\n]*?mem_mb=(\d+)", output, flags=re.S)
    assert "1500" in measure_memory and "3000" in measure_memory, measure_memory
    # The cancelled training was resubmitted and went on from its saved state.
    training_log = next((workdir / "results").glob(f"*/logs/train_diffusion/{stage}_*.log")).read_text()
    resumed = re.findall(r"resuming from step (\d+)", training_log)
    assert resumed and int(resumed[0]) >= 20, training_log[-2000:]


def test_a_tiny_sweep_is_submitted_once_per_group_and_ungrouped_job(slurm_cluster, tmp_path):
    """Two ratios and a clean control through the shipped profile's groups: each model's generation and measurement
    are one sbatch submission, the summaries run where snakemake runs, everything else is one submission per job."""
    profile = local_profile(tmp_path)
    config = write_config(tmp_path / "sweep.yaml", poisoning__ratios=[0.05, 0.1], generation__guidance_scales=[1],
                          generation__x0_clipping="none", generation__other_conditions=[], defenses__enabled=False,
                          replication__enabled=False, quality__enabled=False)
    workdir = tmp_path / "work"
    planned = planned_jobs(snakemake(workdir, "-n", "--workflow-profile", str(profile), configfile=config))
    grouped = set(yaml.safe_load(profile.joinpath("config.yaml").read_text())["groups"])
    local = {"all", "provenance", "summarize"}
    assert planned["generate"] == planned["measure"] == 3 and grouped == {"generate", "measure"}
    expected = sum(count for rule, count in planned.items() if rule not in grouped | local) + planned["generate"]
    started = time.perf_counter()
    snakemake(workdir, "--workflow-profile", str(profile), configfile=config)
    print(f"tiny sweep through SLURM: {sum(planned.values())} jobs, {expected} submissions, "
          f"{time.perf_counter() - started:.0f} s")
    submissions = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(submissions) == expected, [str(path.relative_to(workdir)) for path in submissions]
    assert sum("group_model" in str(path) for path in submissions) == planned["generate"]
    table = pd.read_csv(workdir / "results/experiments/tiny/summary/trigger_amplification.csv")
    assert set(table.attack) == {"patch-p0.05", "patch-p0.1", "clean"}


def test_cuda_jobs_get_the_clusters_gpu(slurm_cluster, tmp_path):
    """device: cuda through SLURM. The local cluster's GPU is a fake GRES that torch cannot use, so the first GPU job
    (the content judge) must fail; its message shows what SLURM handed it: CUDA_VISIBLE_DEVICES from the GRES, which
    SLURM sets only for a job submitted with --gpus. Rules that never touch the device finish on GPU-less terms."""
    profile = local_profile(tmp_path)
    config = write_config(tmp_path / "cuda.yaml", device="cuda")
    workdir = tmp_path / "work"
    result = snakemake(workdir, "--workflow-profile", str(profile), "--until", "train_content_judge",
                       configfile=config, timeout=600, check=False)
    assert result.returncode != 0, "a CUDA job ran on a fake GPU: the test cannot tell what it was given"
    assert list((workdir / "results").glob("*/data/clean-*/train/metadata.jsonl")), "prepare_data did not finish"
    judge_logs = list((workdir / "results").glob("*/logs/train_content_judge/*.log"))
    assert judge_logs, "the content judge's job left no log"
    text = "\n".join(path.read_text() for path in judge_logs)
    assert "device 'cuda' was requested but torch finds no CUDA device" in text, text[-2000:]
    visible = text.split("CUDA_VISIBLE_DEVICES=", 1)[1].split(")", 1)[0]
    assert visible not in ("", "unset"), f"the judge's job was submitted without a GPU (CUDA_VISIBLE_DEVICES={visible})"
