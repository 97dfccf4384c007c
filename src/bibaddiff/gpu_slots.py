"""One GPU card per job on a workstation with several cards.

Snakemake's ``--resources gpu=N`` only counts: it lets N GPU jobs run at once but does not say which card each one
uses, and CUDA would put every one of them on card 0. Here a job that runs on a GPU takes a *slot*: an exclusive
``flock`` on one lock file per card, then sets ``CUDA_VISIBLE_DEVICES`` to the card(s) it holds before CUDA starts,
so that ``cuda`` (``cuda:0``) is its own card. A job that needs N cards (training under ``accelerate launch`` with
N processes) takes N slots at once, or none.

- **Which cards.** The cards a job may use are those in the ``CUDA_VISIBLE_DEVICES`` that ``snakemake`` was started
  with (indices or UUIDs, kept as written), else every card that ``torch.cuda.device_count()`` finds, counted in a
  child process so that CUDA does not start in the job before its card is chosen.
- **Lock folder.** ``$BIBADDIFF_GPU_SLOT_DIR`` if set, else ``<temp dir>/bibaddiff-gpu-slots-<uid>`` (the system's
  temporary folder, usually ``/tmp``, with the user id in the name): one file per card, ``card-<id>.lock``, naming
  the process that holds it. Runs of one user share the default folder, so two ``snakemake`` runs on one machine
  do not share a card either; point the variable at one folder for several users to share the cards among them.
- **Release.** A slot is released when its job's process ends, however it ends: the kernel drops a ``flock`` when
  the last file descriptor to the lock is closed, so a killed job frees its card and no stale lock needs clearing.
- **Waiting.** When every card is taken (by another ``snakemake`` run, say), a job waits, logging every minute who
  holds the cards, for at most ``$BIBADDIFF_GPU_SLOT_TIMEOUT`` seconds (default 24 hours), then fails. A request
  for more cards than the job may use fails at once: no slot can ever come free for it.
- **Where nothing happens.** Under SLURM (``SLURM_JOB_ID`` set) the scheduler has already handed the job its cards;
  with ``device: cpu`` no card is wanted; with no card visible at all, the job runs where
  :func:`bibaddiff.utils.select_device` puts it.

Jobs take their slot with :func:`hold_job_gpus` (workflow scripts, first thing in ``main``) or with this module's
command line, which holds the slots and then replaces itself by the command, so that the command inherits the locks
(the train_diffusion rule: ``python -m bibaddiff.gpu_slots --device cuda --cards 2 -- accelerate launch ...``).
CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it starts, and ``torch.cuda.is_available()`` starts it (diffusers
calls it when imported): nothing a job runs before its slot is held may touch CUDA. This module imports no torch.
:func:`check_workstation_gpus` stops a run at its start when ``--resources gpu=N`` asks for more cards than there are.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path

from bibaddiff.errors import BibaddiffError

SLOT_DIR_VARIABLE = "BIBADDIFF_GPU_SLOT_DIR"
TIMEOUT_VARIABLE = "BIBADDIFF_GPU_SLOT_TIMEOUT"
# Set in a job that holds its slots, and inherited by what it starts (accelerate's processes, a command run by the
# command line below): they use the cards already held instead of waiting for a second slot of their own.
HELD_VARIABLE = "BIBADDIFF_GPU_SLOTS_HELD"
DEFAULT_TIMEOUT_SECONDS = 24 * 3600.0
REPORT_EVERY_SECONDS = 60.0
POLL_SECONDS = 1.0
DEVICES = ("auto", "cpu", "cuda")

logger = logging.getLogger("bibaddiff.gpu_slots")  # the same name when run as python -m

# The leases of this process's job: referenced here so that their lock files stay open until the process ends.
_job_leases: list[GpuSlotLease] = []


def gpu_slot_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder of the lock files: ``$BIBADDIFF_GPU_SLOT_DIR``, else ``<temp dir>/bibaddiff-gpu-slots-<uid>``."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(SLOT_DIR_VARIABLE)
    if chosen is not None:
        if not chosen.strip():
            raise BibaddiffError(f"{SLOT_DIR_VARIABLE} is set but empty; unset it or name a folder")
        return Path(chosen).expanduser()
    return Path(tempfile.gettempdir()) / f"bibaddiff-gpu-slots-{os.getuid()}"


def slot_timeout(environ: Mapping[str, str] | None = None) -> float:
    """How long a job waits for a free card: ``$BIBADDIFF_GPU_SLOT_TIMEOUT`` seconds, default 24 hours."""
    environ = os.environ if environ is None else environ
    text = environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        raise BibaddiffError(f"{TIMEOUT_VARIABLE} must be a number of seconds; got {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise BibaddiffError(f"{TIMEOUT_VARIABLE} must be a positive, finite number of seconds; got {text!r}")
    return seconds


def parse_visible_cards(value: str) -> list[str]:
    """The cards a ``CUDA_VISIBLE_DEVICES`` value lists, as written (indices or ``GPU-``/``MIG-`` UUIDs).

    As CUDA does, the list ends at a negative index (``-1`` hides every card); an empty value lists none."""
    if not isinstance(value, str):
        raise BibaddiffError(f"CUDA_VISIBLE_DEVICES must be text; got {type(value).__name__}")
    cards: list[str] = []
    for entry in (part.strip() for part in value.split(",")) if value.strip() else ():
        if re.fullmatch(r"-\d+", entry):
            break
        if not entry:
            raise BibaddiffError(f"CUDA_VISIBLE_DEVICES={value} has an empty entry; list cards as 0,1,2")
        if entry in cards:
            raise BibaddiffError(f"CUDA_VISIBLE_DEVICES={value} lists card {entry} twice")
        cards.append(entry)
    return cards


def count_cuda_cards() -> int:
    """How many CUDA cards torch finds, asked of a child process: in this one, CUDA would start and read
    ``CUDA_VISIBLE_DEVICES`` before the job's card is chosen."""
    if sys.platform.startswith("linux") and not any(
            os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")):
        # No NVIDIA (native or WSL) or ROCm driver: no card, and no second of importing torch to learn it.
        return 0
    command = [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
        return int(answer.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as error:
        raise BibaddiffError(f"could not count the CUDA cards with torch.cuda.device_count() ({error}); "
                             "set CUDA_VISIBLE_DEVICES to the cards to use") from None


def visible_cards(environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """The cards a job may use and where that list comes from, in words for messages."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return parse_visible_cards(listed), f"CUDA_VISIBLE_DEVICES={listed}"
    count = count_cuda_cards()
    return [str(index) for index in range(count)], "torch.cuda.device_count(); CUDA_VISIBLE_DEVICES is unset"


def lock_file(directory: str | os.PathLike, card: str) -> Path:
    """The lock file of ``card`` in ``directory``."""
    if not isinstance(card, str) or not card.strip():
        raise BibaddiffError(f"a card id must be non-empty text; got {card!r}")
    # A UUID may hold characters that a file name should not; indices and UUIDs keep their letters and digits.
    return Path(directory) / f"card-{re.sub(r'[^A-Za-z0-9._-]', '_', card)}.lock"


class GpuSlotLease:
    """Cards held through open, locked files; :meth:`release` (or the end of the process) frees them."""

    def __init__(self, cards: list[str], descriptors: list[int]):
        self.cards = cards
        self._descriptors = descriptors

    def release(self) -> None:
        for descriptor in self._descriptors:
            os.close(descriptor)
        self._descriptors = []

    def keep_across_exec(self) -> None:
        """Let a program that replaces this process (``os.exec*``) inherit the locks, and so hold the cards."""
        for descriptor in self._descriptors:
            os.set_inheritable(descriptor, True)

    def __enter__(self) -> GpuSlotLease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # Another user's file in a shared folder: flock needs no write access; only the holder's note is lost.
        return os.open(path, os.O_RDONLY)


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding ``path``'s lock, or None while another process holds it."""
    descriptor = _open_lock(path)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _note_holder(descriptor: int) -> None:
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    except OSError:
        pass  # read-only in a shared folder: the lock holds all the same


def _holders(directory: Path, cards: Sequence[str]) -> str:
    notes = []
    for card in cards:
        try:
            note = lock_file(directory, card).read_text().strip()
        except OSError:
            note = ""
        notes.append(f"card {card}: {note or 'holder unknown'}")
    return "; ".join(notes)


def acquire_gpu_slots(count: int, cards: Sequence[str], directory: str | os.PathLike, *, timeout: float,
                      poll_seconds: float = POLL_SECONDS, report_every: float = REPORT_EVERY_SECONDS,
                      log: Callable[[str], None] = logger.warning, source: str | None = None) -> GpuSlotLease:
    """Lock ``count`` of ``cards`` (the first free ones, in order) in ``directory``, waiting at most ``timeout``
    seconds while fewer are free; ``log`` hears about the wait when it starts and every ``report_every`` seconds.
    ``source`` says in messages where the card list came from. Either every card asked for is held, or none."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BibaddiffError(f"the number of GPU cards to hold must be a whole number of at least 1; got {count!r}")
    if isinstance(cards, str) or not all(isinstance(card, str) and card for card in cards):
        raise BibaddiffError(f"cards must be a list of card ids as text; got {cards!r}")
    if len(set(cards)) != len(cards):
        raise BibaddiffError(f"cards lists a card twice: {list(cards)}")
    for name, value in (("timeout", timeout), ("poll_seconds", poll_seconds), ("report_every", report_every)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BibaddiffError(f"{name} must be a positive number of seconds; got {value!r}")
    among = (",".join(cards) or "none") + (f" ({source})" if source else "")
    if count > len(cards):
        raise BibaddiffError(f"this job asks for {count} GPU card(s) at once, but only {len(cards)} are visible to it "
                             f"({source or ','.join(cards) or 'none'}): no slot can ever be free for it; ask for fewer "
                             "or make more cards visible")
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise BibaddiffError(f"cannot create the GPU lock folder {directory} ({error.strerror}); "
                             f"set {SLOT_DIR_VARIABLE} to a writable folder") from None
    started = time.monotonic()
    next_report = started
    while True:
        taken: list[tuple[str, int]] = []
        try:
            for card in cards:
                descriptor = _try_lock(lock_file(directory, card))
                if descriptor is not None:
                    taken.append((card, descriptor))
                    if len(taken) == count:
                        break
        except OSError as error:
            for _, descriptor in taken:
                os.close(descriptor)
            raise BibaddiffError(f"cannot lock a GPU slot in {directory} ({error.strerror}); "
                                 f"set {SLOT_DIR_VARIABLE} to a local, writable folder") from None
        if len(taken) == count:
            for _, descriptor in taken:
                _note_holder(descriptor)
            return GpuSlotLease([card for card, _ in taken], [descriptor for _, descriptor in taken])
        # Hold nothing while waiting: two jobs that each hold part of what they need would wait for each other.
        for _, descriptor in taken:
            os.close(descriptor)
        waited = time.monotonic() - started
        if waited >= timeout:
            raise BibaddiffError(f"no {count} free GPU card(s) among {among} after waiting {waited:.0f} s (the limit: "
                                 f"{TIMEOUT_VARIABLE}={timeout:g}); held: {_holders(directory, cards)}; "
                                 f"locks in {directory}")
        if time.monotonic() >= next_report:
            log(f"waiting for {count} free GPU card(s) among {among}, {waited:.0f} s of at most {timeout:g} s; "
                f"held: {_holders(directory, cards)}; locks in {directory}")
            next_report += report_every
        time.sleep(min(poll_seconds, max(timeout - waited, 0.0)))


def hold_job_gpus(device: str, cards: int = 1, *, environ: MutableMapping[str, str] | None = None,
                  poll_seconds: float = POLL_SECONDS, report_every: float = REPORT_EVERY_SECONDS) -> list[str]:
    """Give this job ``cards`` GPU cards of its own for the rest of its process, before CUDA starts: holds their
    slots and sets ``CUDA_VISIBLE_DEVICES`` in ``environ`` (default: this process's) to them. Returns the cards held;
    none under SLURM, for ``device`` ``cpu``, when no card is visible, or when this process (or its parent) already
    holds its cards."""
    if device not in DEVICES:
        raise BibaddiffError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if isinstance(cards, bool) or not isinstance(cards, int) or cards < 1:
        raise BibaddiffError(f"a GPU job holds a whole number of at least 1 card; got {cards!r}")
    own_process = environ is None
    environ = os.environ if environ is None else environ
    if device == "cpu" or environ.get("SLURM_JOB_ID") or environ.get(HELD_VARIABLE):
        return []
    if own_process and "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise BibaddiffError("CUDA started in this job before it chose its GPU card; hold the card "
                             "(bibaddiff.gpu_slots.hold_job_gpus) before anything touches CUDA")
    allowed, source = visible_cards(environ)
    if not allowed:
        return []
    directory = gpu_slot_dir(environ)
    if SLOT_DIR_VARIABLE not in environ:
        _check_own_folder(directory)
    lease = acquire_gpu_slots(cards, allowed, directory, timeout=slot_timeout(environ),
                              poll_seconds=poll_seconds, report_every=report_every, source=source)
    _job_leases.append(lease)
    environ["CUDA_VISIBLE_DEVICES"] = environ[HELD_VARIABLE] = ",".join(lease.cards)
    logger.info("this job holds GPU card(s) %s (%s; locks in %s)", ",".join(lease.cards), source, directory)
    return lease.cards


def _check_own_folder(directory: Path) -> None:
    """The default folder lies in the shared temporary folder: another user who made it first could hold every
    card's lock, so it must be this user's."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = directory.stat().st_uid
    except OSError as error:
        raise BibaddiffError(f"cannot create the GPU lock folder {directory} ({error.strerror}); "
                             f"set {SLOT_DIR_VARIABLE} to a writable folder") from None
    if owner != os.getuid():
        raise BibaddiffError(f"the GPU lock folder {directory} belongs to another user (uid {owner}); "
                             f"set {SLOT_DIR_VARIABLE} to a folder of your own")


def check_workstation_gpus(gpu_resource: int | None, processes: int, environ: Mapping[str, str] | None = None) -> None:
    """Stop a run at its start, with one line naming both numbers, when it asks for more cards at once than there
    are: ``gpu_resource`` is the run's ``gpu`` resource (``--resources gpu=N``, or the workstation profile's), None
    when the run has none (the SLURM profile: the scheduler places jobs); ``processes`` is
    ``diffusion.training.processes``, the cards of one training job. Nothing is checked under SLURM, nor when no
    card is visible (jobs then run on the CPU, or stop in :func:`bibaddiff.utils.select_device`)."""
    if gpu_resource is not None and (isinstance(gpu_resource, bool) or not isinstance(gpu_resource, int)
                                     or gpu_resource < 0):
        raise BibaddiffError(f"--resources gpu must be a whole number of GPU cards, 0 or more; got {gpu_resource!r}")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise BibaddiffError(f"diffusion.training.processes must be a whole number of at least 1; got {processes!r}")
    environ = os.environ if environ is None else environ
    # One card is always possible (or the CPU is used): only larger requests are worth counting the cards for.
    if gpu_resource is None or environ.get("SLURM_JOB_ID") or max(gpu_resource, processes) <= 1:
        return
    allowed, source = visible_cards(environ)
    if not allowed:
        return
    for asked, count in ((f"--resources gpu={gpu_resource}", gpu_resource),
                         (f"diffusion.training.processes: {processes}", processes)):
        if count > len(allowed):
            raise BibaddiffError(f"{asked} asks for {count} GPU cards at once, but only {len(allowed)} are visible "
                                 f"({source}); ask for at most {len(allowed)} or make more cards visible")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bibaddiff.gpu_slots --device D --cards N -- COMMAND...``: hold N slots, then become COMMAND."""
    parser = argparse.ArgumentParser(prog="python -m bibaddiff.gpu_slots",
                                     description="Run COMMAND on GPU cards of its own (one slot per card).")
    parser.add_argument("--device", required=True, choices=DEVICES, help="the config's device; cpu holds nothing")
    parser.add_argument("--cards", required=True, type=int, help="how many cards the command needs (processes)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not command:
        print("error: no command to run after --", file=sys.stderr)
        return 2
    try:
        hold_job_gpus(args.device, args.cards)
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for lease in _job_leases:
        lease.keep_across_exec()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"error: cannot run {command[0]} ({error.strerror})", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
