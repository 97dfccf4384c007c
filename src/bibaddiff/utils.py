"""Small shared helpers: devices, threads, atomic JSON files, logged runs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

# torch is imported where it is used: config validation (every snakemake call) reads JSON through this module and
# must not pay for importing torch.
if TYPE_CHECKING:
    import torch


def select_device(prefer: str = "auto") -> torch.device:
    """The device to run on: CUDA when present (or asked for), the CPU otherwise."""
    import torch

    from bibaddiff.errors import BibaddiffError

    if prefer not in {"auto", "cpu", "cuda"}:
        raise BibaddiffError(f"device must be one of auto, cpu, cuda; got {prefer!r}")
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        # What the scheduler handed the job tells a cluster user whether the GPU was not allocated or not usable.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise BibaddiffError(f"device 'cuda' was requested but torch finds no CUDA device (CUDA_VISIBLE_DEVICES={visible})")
    return torch.device("cuda")


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads so that parallel jobs on one machine do not oversubscribe it."""
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1; got {threads}")
        torch.set_num_threads(int(threads))


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``: an interrupted job never
    leaves half a file behind, and a failed write leaves no temporary file. The temporary name keeps ``path``'s
    suffix, for writers that pick the format from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically, so that an interrupted job never leaves half a file behind."""
    def dump(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=_json_default)
            handle.write("\n")

    write_atomically(path, dump)


def cache_dir() -> Path:
    """Where checks and digests of the user's files are remembered: ``$BIBADDIFF_CACHE_DIR``, default
    ``~/.cache/bibaddiff``."""
    return Path(os.environ.get("BIBADDIFF_CACHE_DIR") or Path.home() / ".cache" / "bibaddiff")


def check_file_once(path: str | os.PathLike, check, kind: str) -> None:
    """``check(path)``, which raises for a bad file, unless it already passed for this very file: the same resolved path,
    size and modification time. Passes are remembered in :func:`cache_dir`, so that a check which loads a network
    runs once per file, not in every ``snakemake`` invocation and cluster job that validates the config; a failure is
    never remembered, and a cache that cannot be written only costs time."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError:
        check(path)  # names the missing file in its own words
        return
    key = f"{kind} {resolved} {stat.st_size} {stat.st_mtime_ns}"
    cache = cache_dir() / "checked-files.json"
    try:
        passed = set(json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError):
        passed = set()
    if key in passed:
        return
    check(path)
    try:
        write_json(cache, sorted(passed | {key}))
    except OSError:
        pass


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes. Remembered in :func:`cache_dir` with the file's resolved path, size and
    modification time, so that a multi-gigabyte checkpoint is read once, not on every ``snakemake`` call that plans
    with it; a file rewritten in place gets a new modification time and is read again."""
    import hashlib

    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    key = f"{resolved} {stat.st_size} {stat.st_mtime_ns}"
    cache = cache_dir() / "file-digests.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError, TypeError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    # Entries of the same path with another size or time describe older contents: drop them.
    known = {name: value for name, value in known.items() if name.rsplit(" ", 2)[0] != str(resolved)}
    known[key] = digest.hexdigest()
    try:
        write_json(cache, known)
    except OSError:
        pass
    return known[key]


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path) as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class RunningMoments:
    """The mean and standard deviation of every value passed to :meth:`update`, batch by batch, in constant memory.

    Each batch's count, mean and sum of squared deviations are merged into the running ones (Chan, Golub and
    LeVeque's pairwise update, Welford's for batches), in float64: unlike sums of x and x^2, the merge does not lose the
    spread to cancellation when the mean is large beside it, so the result equals the all-at-once statistics to float
    precision. ``name`` says what the values are, in errors.
    """

    def __init__(self, name: str = "values") -> None:
        self.name = name
        self.count = 0
        self.mean = 0.0
        self.squared_deviations = 0.0

    def update(self, values: Any) -> None:
        """Add an array of values (any shape; a CPU tensor converts as an array does)."""
        import numpy as np

        from bibaddiff.errors import BibaddiffError

        batch = np.asarray(values, dtype=np.float64).reshape(-1)
        if not batch.size:
            return
        if not np.all(np.isfinite(batch)):
            raise BibaddiffError(f"{self.name} hold NaN or infinite values")
        batch_mean = float(batch.mean())
        batch_squared_deviations = float(np.square(batch - batch_mean).sum())
        total = self.count + batch.size
        delta = batch_mean - self.mean
        self.mean += delta * batch.size / total
        self.squared_deviations += batch_squared_deviations + delta * delta * self.count * batch.size / total
        self.count = total

    def std(self, ddof: int = 1) -> float:
        """The standard deviation with ``ddof`` delta degrees of freedom: 1 (the default) as torch's ``std``, 0 as
        numpy's."""
        from bibaddiff.errors import BibaddiffError

        if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
            raise BibaddiffError(f"ddof must be a non-negative integer; got {ddof!r}")
        if self.count <= ddof:
            raise BibaddiffError(f"a standard deviation of {self.name} with ddof {ddof} needs more than {ddof} "
                                 f"value(s); got {self.count}")
        return (self.squared_deviations / (self.count - ddof)) ** 0.5


# For the cluster fault tests: "<rule>:<marker file>" makes the first job of <rule> fail, as a node that dies would.
FAIL_ONCE_VARIABLE = "BIBADDIFF_FAIL_ONCE"


def fail_once_if_asked(log_path: Path) -> None:
    """Fail the first job of the rule named in ``$BIBADDIFF_FAIL_ONCE`` (its log lies in logs/<rule>/); the marker
    file it creates lets the retry pass. Unset, as in every real run, this does nothing."""
    asked = os.environ.get(FAIL_ONCE_VARIABLE)
    if not asked:
        return
    rule, _, marker = asked.partition(":")
    if log_path.parent.name == rule and marker and not os.path.exists(marker):
        Path(marker).touch()
        raise RuntimeError(f"failing this first {rule} job on purpose ({FAIL_ONCE_VARIABLE}={asked})")


def disk_full(error: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` comes from a full disk or quota. Writers word it differently: ``OSError`` (errno ENOSPC or
    EDQUOT), safetensors' "StorageFull"; torch.save only says "iostream error", so for any other error the disk
    that holds ``folder`` is asked how much room it has left."""
    import errno
    import shutil

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(cause) for words in ("No space left on device", "StorageFull", "Disk quota exceeded")):
            return True
        cause = cause.__cause__ or cause.__context__
    if folder is None:
        return False
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free < FULL_DISK_BYTES


# Less room than this on the results disk when a write fails means the disk is full (a job's files are larger).
FULL_DISK_BYTES = 1 << 20


PEAK_MEMORY_PREFIX = "peak memory (max RSS of the job's process):"


def peak_memory_mb() -> float:
    """The largest resident memory this process, or any child it waited for, has had: the kernel's high-water mark,
    which periodic sampling (Snakemake's benchmark: every 30 s after the first 15 s) can miss."""
    import resource
    import sys

    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def run_logged(log_path: str | os.PathLike, main, *args, **kwargs) -> Any:
    """Run ``main`` with stdout, stderr and logging going to ``log_path``.

    A user error (:class:`BibaddiffError`) ends the process with its one-line message on the terminal and in
    the log, instead of a traceback; any other exception keeps its traceback in the log.
    """
    import contextlib
    import logging
    import sys
    import traceback

    from bibaddiff.errors import BibaddiffError

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log_file:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log_file
        logging.basicConfig(stream=log_file, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            fail_once_if_asked(log_path)
            result = main(*args, **kwargs)
            print(f"{PEAK_MEMORY_PREFIX} {peak_memory_mb():.0f} MB", file=log_file)
            return result
        except BibaddiffError as error:
            message = f"error: {error}"
            print(message, file=log_file)
            print(message, file=saved[1])
            raise SystemExit(1) from None
        except Exception as error:
            if disk_full(error, log_path.parent):
                # Terminal first: the log itself lies on the full disk.
                print(f"error: no space left on device ({error}); free space where the results folder lies and "
                      "rerun: Snakemake removes this job's unfinished outputs", file=saved[1])
            # Python prints the traceback after the log is closed, so write it here, where the rule's log: points.
            with contextlib.suppress(OSError):
                traceback.print_exc(file=log_file)
            raise
        finally:
            sys.stdout, sys.stderr = saved
