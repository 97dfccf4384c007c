"""One GPU card per job (bibaddiff.gpu_slots), without a GPU: the cards are named in CUDA_VISIBLE_DEVICES, and jobs
are processes started here that report the CUDA_VISIBLE_DEVICES they were handed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from bibaddiff.errors import BibaddiffError
from bibaddiff.gpu_slots import (HELD_VARIABLE, SLOT_DIR_VARIABLE, TIMEOUT_VARIABLE, acquire_gpu_slots,
                                 check_workstation_gpus, gpu_slot_dir, hold_job_gpus, lock_file, parse_visible_cards,
                                 slot_timeout, visible_cards)
from workflow_helpers import REPO, snakemake, write_config

# A job: holds its card(s) as a workflow script does, says which CUDA_VISIBLE_DEVICES it got, marks itself ready,
# then keeps its card(s) until the file named second exists (or until it is killed).
JOB = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from bibaddiff.errors import BibaddiffError
    from bibaddiff.gpu_slots import hold_job_gpus
    try:
        hold_job_gpus(sys.argv[1], int(sys.argv[2]))
    except BibaddiffError as error:  # as run_logged ends a workflow script
        sys.exit(f"error: {error}")
    print(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), flush=True)
    Path(sys.argv[3]).touch()
    while not Path(sys.argv[4]).exists():
        time.sleep(0.05)
""")

# What the slot-holding command line runs: a plain program that reports its environment and waits in the same way.
COMMAND = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    print(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), os.environ.get("BIBADDIFF_GPU_SLOTS_HELD", "-"), flush=True)
    Path(sys.argv[1]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
""")


def job_environment(cards: str, slot_dir: Path, **more: str) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if key not in ("SLURM_JOB_ID", HELD_VARIABLE)}
    # The subprocesses import the package from this checkout, as the test process does.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return environ | {"CUDA_VISIBLE_DEVICES": cards, SLOT_DIR_VARIABLE: str(slot_dir)} | more


def wait_until(condition, what: str, processes: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [process for process in processes if process.poll() is not None]
        if ended:
            raise AssertionError(f"a job ended ({ended[0].returncode}) before {what}: {ended[0].stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Jobs:
    """Job processes started by one test; every one still running at the end is stopped."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.release = tmp_path / "release"
        self.started: list[subprocess.Popen] = []

    def start(self, environ: dict[str, str], *, device: str = "cuda", cards: int = 1,
              wrapped: bool = False) -> tuple[subprocess.Popen, Path]:
        ready = self.tmp_path / f"ready{len(self.started)}"
        if wrapped:
            command = [sys.executable, "-m", "bibaddiff.gpu_slots", "--device", device, "--cards", str(cards), "--",
                       sys.executable, "-c", COMMAND, str(ready), str(self.release)]
        else:
            command = [sys.executable, "-c", JOB, device, str(cards), str(ready), str(self.release)]
        process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(process)
        return process, ready

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()


@pytest.fixture
def jobs(tmp_path):
    started = Jobs(tmp_path)
    yield started
    started.stop()


def test_concurrent_jobs_each_get_a_card_of_their_own_from_the_list_given_to_snakemake(jobs, tmp_path):
    environ = job_environment("4,6,7", tmp_path / "locks", **{TIMEOUT_VARIABLE: "1"})
    running = [jobs.start(environ) for _ in range(3)]
    wait_until(lambda: all(ready.exists() for _, ready in running), "three jobs hold their cards",
               [process for process, _ in running])
    holders = {process.stdout.readline().strip(): process.pid for process, _ in running}
    assert sorted(holders) == ["4", "6", "7"]
    # A fourth job waits for a card, saying so in its log, and gives up at its limit naming who holds the cards.
    fourth, _ = jobs.start(environ)
    assert fourth.wait(timeout=60) == 1
    log = fourth.stderr.read()
    assert "waiting for 1 free GPU card(s) among 4,6,7 (CUDA_VISIBLE_DEVICES=4,6,7)" in log
    assert "error: no 1 free GPU card(s) among 4,6,7 (CUDA_VISIBLE_DEVICES=4,6,7) after waiting" in log
    assert all(f"card {card}: pid {pid} since " in log for card, pid in holders.items()), log


def test_a_killed_jobs_card_goes_to_the_job_waiting_for_it(jobs, tmp_path):
    environ = job_environment("2", tmp_path / "locks")
    first, first_ready = jobs.start(environ)
    wait_until(first_ready.exists, "the first job holds card 2", [first])
    assert first.stdout.readline().strip() == "2"
    second, second_ready = jobs.start(environ)
    time.sleep(1.5)
    assert not second_ready.exists(), "the second job got a card that the first one holds"
    first.send_signal(signal.SIGKILL)  # no handler runs: the kernel alone frees the lock
    first.wait()
    wait_until(second_ready.exists, "the waiting job gets the killed job's card", [second])
    assert second.stdout.readline().strip() == "2"


def test_a_job_asking_for_more_cards_than_there_are_fails_at_once_naming_both(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    started = time.monotonic()
    with pytest.raises(BibaddiffError, match=r"asks for 4 GPU card\(s\) at once, but only 2 are visible to it "
                                             r"\(CUDA_VISIBLE_DEVICES=0,1\)"):
        hold_job_gpus("cuda", 4, environ=environ)
    assert time.monotonic() - started < 5
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_the_run_stops_at_its_start_when_the_gpu_resource_exceeds_the_cards():
    two_cards = {"CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(BibaddiffError) as raised:
        check_workstation_gpus(4, 1, two_cards)
    assert str(raised.value) == ("--resources gpu=4 asks for 4 GPU cards at once, but only 2 are visible "
                                 "(CUDA_VISIBLE_DEVICES=0,1); ask for at most 2 or make more cards visible")
    with pytest.raises(BibaddiffError, match=r"diffusion.training.processes: 3 asks for 3 GPU cards at once, but "
                                             r"only 2 are visible \(CUDA_VISIBLE_DEVICES=0,1\)"):
        check_workstation_gpus(2, 3, two_cards)
    check_workstation_gpus(2, 2, two_cards)
    check_workstation_gpus(None, 4, two_cards)  # the SLURM profile has no gpu resource: the scheduler places jobs
    check_workstation_gpus(4, 1, {**two_cards, "SLURM_JOB_ID": "7"})
    check_workstation_gpus(4, 1, {"CUDA_VISIBLE_DEVICES": ""})  # no card: the jobs run on the CPU


@pytest.mark.workflow
def test_snakemake_with_more_gpus_than_cards_stops_before_any_job_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    config = write_config(tmp_path / "cuda.yaml", device="cuda")
    result = snakemake(tmp_path / "work", "-n", "--resources", "gpu=4", configfile=config, check=False)
    assert result.returncode == 1
    assert ("error: --resources gpu=4 asks for 4 GPU cards at once, but only 2 are visible (CUDA_VISIBLE_DEVICES=0,1); "
            "ask for at most 2 or make more cards visible") in result.stderr.splitlines()


def test_under_slurm_the_environment_is_left_as_the_scheduler_set_it(tmp_path):
    environ = {"SLURM_JOB_ID": "12345", "CUDA_VISIBLE_DEVICES": "0,1", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    before = dict(environ)
    assert hold_job_gpus("cuda", 2, environ=environ) == []
    assert environ == before and not (tmp_path / "locks").exists()


def test_the_slot_command_line_under_slurm_runs_its_command_untouched(jobs, tmp_path):
    environ = job_environment("3,1", tmp_path / "locks", SLURM_JOB_ID="12345")
    process, ready = jobs.start(environ, cards=2, wrapped=True)
    wait_until(ready.exists, "the command runs", [process])
    assert process.stdout.readline().split() == ["3,1", "-"]
    assert not (tmp_path / "locks").exists()


def test_a_cpu_job_holds_nothing(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    assert hold_job_gpus("cpu", environ=environ) == []
    assert environ == {"CUDA_VISIBLE_DEVICES": "0", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    assert not (tmp_path / "locks").exists()


def test_with_no_card_visible_a_job_holds_nothing_and_runs_where_select_device_puts_it(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    assert hold_job_gpus("auto", environ=environ) == []
    assert environ["CUDA_VISIBLE_DEVICES"] == "" and HELD_VARIABLE not in environ


def test_multi_process_training_takes_one_distinct_card_per_process(jobs, tmp_path):
    """The train_diffusion rule's command line: the slot holder becomes the command, which keeps the locks."""
    environ = job_environment("0,1,2,3", tmp_path / "locks", **{TIMEOUT_VARIABLE: "1"})
    running = [jobs.start(environ, cards=2, wrapped=True) for _ in range(2)]
    wait_until(lambda: all(ready.exists() for _, ready in running), "two 2-process trainings hold their cards",
               [process for process, _ in running])
    seen = [process.stdout.readline().split() for process, _ in running]
    cards = [visible.split(",") for visible, _ in seen]
    assert all(len(pair) == 2 for pair in cards) and sorted(sum(cards, [])) == ["0", "1", "2", "3"]
    assert [held for _, held in seen] == [visible for visible, _ in seen]  # what accelerate's processes inherit
    # Every card is taken while the commands run (they hold the locks, not a process that has gone): one more waits
    # and gives up.
    third, _ = jobs.start(environ, cards=1, wrapped=True)
    assert third.wait(timeout=60) == 1
    assert "error: no 1 free GPU card(s) among 0,1,2,3 (CUDA_VISIBLE_DEVICES=0,1,2,3)" in third.stderr.read()


def test_the_slot_command_line_refuses_more_processes_than_cards_without_running_the_command(jobs, tmp_path):
    process, ready = jobs.start(job_environment("0,1", tmp_path / "locks"), cards=4, wrapped=True)
    assert process.wait(timeout=60) == 1
    assert process.stderr.read().strip().splitlines()[-1] == (
        "error: this job asks for 4 GPU card(s) at once, but only 2 are visible to it (CUDA_VISIBLE_DEVICES=0,1): no "
        "slot can ever be free for it; ask for fewer or make more cards visible")
    assert not ready.exists()


def test_a_process_that_inherits_held_cards_does_not_wait_for_slots_of_its_own(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "5", HELD_VARIABLE: "5", SLOT_DIR_VARIABLE: str(tmp_path / "locks")}
    assert hold_job_gpus("cuda", environ=environ) == []
    assert environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_all_or_nothing_a_job_never_keeps_part_of_the_cards_it_needs(tmp_path):
    with acquire_gpu_slots(1, ["0", "1"], tmp_path, timeout=1) as first:
        assert first.cards == ["0"]
        with pytest.raises(BibaddiffError, match="no 2 free GPU card"):
            acquire_gpu_slots(2, ["0", "1"], tmp_path, timeout=0.3, poll_seconds=0.05, log=lambda line: None)
        # Card 1 was tried and let go: another job can take it.
        with acquire_gpu_slots(1, ["0", "1"], tmp_path, timeout=1) as second:
            assert second.cards == ["1"]
    with acquire_gpu_slots(2, ["0", "1"], tmp_path, timeout=1) as both:
        assert both.cards == ["0", "1"]
        assert lock_file(tmp_path, "0").read_text().startswith(f"pid {os.getpid()} since ")


def test_waiting_is_reported_when_it_starts_and_then_periodically(tmp_path):
    lines = []
    with acquire_gpu_slots(1, ["0"], tmp_path, timeout=1):
        with pytest.raises(BibaddiffError, match=rf"after waiting 1 s \(the limit: {TIMEOUT_VARIABLE}=1.2\)"):
            acquire_gpu_slots(1, ["0"], tmp_path, timeout=1.2, poll_seconds=0.05, report_every=0.5, log=lines.append)
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("waiting for 1 free GPU card(s) among 0, 0 s of at most 1.2 s; held: card 0: pid ")


def test_cuda_visible_devices_is_read_as_cuda_reads_it():
    assert parse_visible_cards("3, 5,GPU-8a1f-22,-1,7") == ["3", "5", "GPU-8a1f-22"]
    assert parse_visible_cards("") == [] and parse_visible_cards("-1") == []
    with pytest.raises(BibaddiffError, match="CUDA_VISIBLE_DEVICES=0,1,0 lists card 0 twice"):
        parse_visible_cards("0,1,0")
    with pytest.raises(BibaddiffError, match="CUDA_VISIBLE_DEVICES=0,,1 has an empty entry"):
        parse_visible_cards("0,,1")


def test_without_cuda_visible_devices_the_cards_are_those_torch_counts(monkeypatch):
    import bibaddiff.gpu_slots as gpu_slots

    monkeypatch.setattr(gpu_slots, "count_cuda_cards", lambda: 3)
    assert visible_cards({}) == (["0", "1", "2"], "torch.cuda.device_count(); CUDA_VISIBLE_DEVICES is unset")
    with pytest.raises(BibaddiffError, match=r"--resources gpu=4 asks for 4 GPU cards at once, but only 3 are visible "
                                             r"\(torch.cuda.device_count\(\); CUDA_VISIBLE_DEVICES is unset\)"):
        check_workstation_gpus(4, 1, {})


def test_the_lock_folder_is_per_user_in_the_temp_dir_unless_named():
    assert gpu_slot_dir({}) == Path(tempfile.gettempdir()) / f"bibaddiff-gpu-slots-{os.getuid()}"
    assert gpu_slot_dir({SLOT_DIR_VARIABLE: "/scratch/locks"}) == Path("/scratch/locks")
    with pytest.raises(BibaddiffError, match=f"{SLOT_DIR_VARIABLE} is set but empty"):
        gpu_slot_dir({SLOT_DIR_VARIABLE: " "})


def test_the_wait_limit_comes_from_its_variable():
    assert slot_timeout({}) == 24 * 3600
    assert slot_timeout({TIMEOUT_VARIABLE: "90"}) == 90
    for bad in ("soon", "0", "-5", "inf", "nan"):
        with pytest.raises(BibaddiffError, match=f"{TIMEOUT_VARIABLE} must be a"):
            slot_timeout({TIMEOUT_VARIABLE: bad})


@pytest.mark.parametrize("device, cards, message", [
    ("gpu", 1, "device must be one of auto, cpu, cuda; got 'gpu'"),
    ("cuda", 0, "a GPU job holds a whole number of at least 1 card; got 0"),
    ("cuda", True, "a GPU job holds a whole number of at least 1 card; got True"),
    ("cuda", "2", "a GPU job holds a whole number of at least 1 card; got '2'"),
])
def test_bad_requests_are_named(device, cards, message, tmp_path):
    with pytest.raises(BibaddiffError) as raised:
        hold_job_gpus(device, cards, environ={"CUDA_VISIBLE_DEVICES": "0", SLOT_DIR_VARIABLE: str(tmp_path)})
    assert str(raised.value) == message


def test_bad_arguments_to_the_allocator_and_the_check_are_named(tmp_path):
    with pytest.raises(BibaddiffError, match="at least 1; got -1"):
        acquire_gpu_slots(-1, ["0"], tmp_path, timeout=1)
    with pytest.raises(BibaddiffError, match="cards must be a list of card ids"):
        acquire_gpu_slots(1, "01", tmp_path, timeout=1)
    with pytest.raises(BibaddiffError, match="cards lists a card twice"):
        acquire_gpu_slots(1, ["0", "0"], tmp_path, timeout=1)
    with pytest.raises(BibaddiffError, match="timeout must be a positive number of seconds; got 0"):
        acquire_gpu_slots(1, ["0"], tmp_path, timeout=0)
    with pytest.raises(BibaddiffError, match="--resources gpu must be a whole number of GPU cards, 0 or more; got -2"):
        check_workstation_gpus(-2, 1, {})
    with pytest.raises(BibaddiffError, match="diffusion.training.processes must be a whole number of at least 1"):
        check_workstation_gpus(2, 0, {})
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with pytest.raises(BibaddiffError, match=f"cannot create the GPU lock folder .*; set {SLOT_DIR_VARIABLE}"):
        acquire_gpu_slots(1, ["0"], blocked / "locks", timeout=1)


def test_a_job_whose_cuda_already_started_is_told_to_hold_its_card_first(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(SLOT_DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(HELD_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(BibaddiffError, match="CUDA started in this job before it chose its GPU card"):
        hold_job_gpus("cuda")


def test_every_adapter_that_reads_the_device_holds_its_card_first():
    """The card must be chosen before anything in main() can start CUDA (loading a model, select_device)."""
    import ast

    readers = [path for path in (REPO / "workflow_scripts").glob("*.py") if "params.device" in path.read_text()]
    assert {"generate.py", "measure.py", "train_judge.py", "replication.py"} <= {path.name for path in readers}
    for path in readers:
        main = next(node for node in ast.parse(path.read_text()).body
                    if isinstance(node, ast.FunctionDef) and node.name == "main")
        assert ast.unparse(main.body[0]) == "hold_job_gpus(snakemake.params.device)", path.name


def test_the_workflow_scripts_imports_do_not_start_cuda():
    """A job's card is set in CUDA_VISIBLE_DEVICES at the start of its script's main(); CUDA reads that variable
    once, when it starts, so nothing the scripts import may start it. torch.cuda.is_available() starts it, and
    diffusers calls that when it is imported: the library imports diffusers only inside the functions that need it."""
    modules = set()
    for script in (REPO / "workflow_scripts").glob("*.py"):
        for line in script.read_text().splitlines():
            if line.startswith(("from ", "import ")):
                modules.add(line.split()[1])
    code = textwrap.dedent(f"""
        import importlib, torch
        starts = []
        count = torch._C._cuda_getDeviceCount
        torch._C._cuda_getDeviceCount = lambda: starts.append("cudaGetDeviceCount") or count()
        for name in {sorted(modules)!r}:
            importlib.import_module(name)
        print(starts, torch.cuda.is_initialized())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=job_environment("0", Path(tempfile.gettempdir())))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[] False"
