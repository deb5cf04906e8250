"""Regenerate docs/bad_input.md: what the user sees for each kind of bad input, and whether anything was lost.

Each case is built in a temporary folder from synthetic phantoms and run through the product's real code paths
(``io.load_patient`` / ``_reader.napari_get_reader``, ``cli.main(["segment", ...])``, ``model.load_model``,
``export.export_corrected_patient``); the script prints a Markdown table.

    .venv/bin/python docs/bad_input_table.py > docs/bad_input.md
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

PID = "BAD_01_20000101"
TINY = {"features": [4, 8, 16, 32], "bottleneck": 32}  # as tests/conftest.py make_tiny_checkpoint
MAX_CHARS = 160


@dataclass
class Row:
    input: str
    where: str
    seen: str
    safe: str
    problem: str = ""  # non-empty: a raw traceback, an unclear message or lost data (listed below the table)


class Context:
    """The temporary folder, path clean-up for messages and a shared tiny checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checkpoint: Path | None = None

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def clean(self, text: str) -> str:
        """Replace temporary paths by their base name; one line."""
        def base(match: re.Match) -> str:
            path = match.group(0)
            trail = ""
            while path.endswith((".", "/")) and len(path) > 1:
                trail = path[-1] + trail if path[-1] == "." else trail
                path = path[:-1]
            return (Path(path).name or path) + trail

        text = " ".join(str(text).split())
        for prefix in {str(self.root), os.path.realpath(self.root)}:
            text = re.sub(re.escape(prefix) + r"[^\s:;,()'\"\[\]]*", base, text)
        return text

    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            self._checkpoint = make_checkpoint(self.root / "tiny.pt")
        return self._checkpoint


def shorten(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def msg(text: str, limit: int = MAX_CHARS) -> str:
    """Mark a message the user sees verbatim (rendered as code in the table)."""
    return f"\x02{shorten(text, limit)}\x03"


def make_checkpoint(path: Path, **config) -> Path:
    """A random-weight tiny U-Net in the project's checkpoint format."""
    import torch

    from napari_lgg_seg.model import ModelConfig, UNet, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, UNet(ModelConfig.from_dict({**TINY, **config})), config={"note": "bad-input table"})
    return path


def write_patient(folder: Path, n: int = 3, size: int | tuple[int, int] = 32, masks: bool = True,
                  numbers: list[int] | None = None, convert: Callable[[np.ndarray], np.ndarray] | None = None,
                  seed: int = 0) -> Path:
    """Phantom slices ``<PID>_<k>.tif`` (+ ``_mask.tif``); ``convert`` changes each image array before writing."""
    from napari_lgg_seg.sample import make_phantom

    h, w = (size, size) if isinstance(size, int) else size
    images, truth = make_phantom(n_slices=n, size=max(h, w), seed=seed)
    images, truth = images[:, :h, :w], truth[:, :h, :w]
    folder.mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(numbers or range(1, n + 1)):
        image = convert(images[i]) if convert else images[i]
        photometric = "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack"
        extra = {"extrasamples": ["unassalpha"]} if image.ndim == 3 and image.shape[-1] == 4 else {}
        tifffile.imwrite(folder / f"{PID}_{k}.tif", image, photometric=photometric, **extra)
        if masks:
            tifffile.imwrite(folder / f"{PID}_{k}_mask.tif", truth[i] * 255)
    return folder


def snapshot(path: Path) -> dict[str, str]:
    """Relative path -> content hash (``dir``, ``link -> target``) of everything below ``path``, links not followed."""
    if not os.path.lexists(path):
        return {}
    result: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                result[rel] = "link -> " + os.readlink(full)
            elif os.path.isdir(full):
                result[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    result[rel] = hashlib.sha256(f.read()).hexdigest()
    return result


def unchanged(before: dict[str, str], path: Path, what: str) -> tuple[str, str]:
    after = snapshot(path)
    if after == before:
        entries = f"{len(before)} {'entry' if len(before) == 1 else 'entries'}"
        return f"yes ({what} unchanged: {entries}, same bytes)", ""
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    return f"no ({what} changed: {', '.join(changed[:3])})", "data changed"


# --- runners -----------------------------------------------------------------------------------------------


def run_reader(ctx: Context, folder: Path, target: Path | None = None) -> tuple[str, str, str]:
    """(what the user sees, where, problem) for ``load_patient`` (and whether napari offers the reader)."""
    from napari_lgg_seg._reader import napari_get_reader
    from napari_lgg_seg.io import LGGFormatError, load_patient

    target = target or folder
    problem = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            patient = load_patient(target)
        except LGGFormatError as err:
            seen = f"error: {msg(ctx.clean(err))}"
        except Exception as err:  # noqa: BLE001 - reported as a finding
            seen = f"RAW {type(err).__name__}: {msg(ctx.clean(err))}"
            problem = f"load_patient raised {type(err).__name__} instead of LGGFormatError"
        else:
            z, h, w, _ = patient.images.shape
            truth = "ground truth loaded" if patient.masks is not None else "no ground truth (no labels layer)"
            seen = f"opens: {z} slices {h}x{w}, {truth}"
    notes = [ctx.clean(w.message) for w in caught]
    for note, w in zip(notes, caught):
        prefix = "" if w.category is UserWarning else f"{w.category.__name__}: "
        seen += f"; warning: {msg(prefix + note)}"
    try:
        offered = napari_get_reader(str(target)) is not None
    except Exception as err:  # noqa: BLE001
        offered = False
        problem = problem or f"napari_get_reader raised {type(err).__name__}: {err}"
    where = "reader" if offered else "reader (the napari reader hook declines the folder; napari shows its own message)"
    return seen, where, problem


def run_cli(ctx: Context, *args: str | Path) -> tuple[int | str, str, str]:
    """(exit code, stdout, stderr) of ``napari-lgg-seg ...`` run in-process."""
    from napari_lgg_seg import cli

    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        try:
            code: int | str = cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # noqa: BLE001 - a traceback the user would see
            code = "uncaught exception"
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def segment(ctx: Context, source: Path, out: Path, *extra: str | Path, weights: Path | None = None):
    return run_cli(ctx, "segment", source, "--out", out, "--weights", weights or ctx.checkpoint(),
                   "--device", "cpu", "--batch-size", "4", *extra)


def cli_seen(ctx: Context, code, out: str, err: str, expect_error: bool = True) -> tuple[str, str]:
    """Text of the CLI's answer and a problem note when it is not one clean line with exit code 2."""
    problem = ""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if "Traceback" in err:
        problem = "the CLI printed a traceback"
    elif expect_error and code != 2:
        problem = f"exit code {code}, expected 2"
    elif expect_error and not (lines and lines[-1].startswith("napari-lgg-seg segment: error: ")):
        problem = "the last stderr line is not 'napari-lgg-seg segment: error: ...'"
    if code == 0:
        shown = [ln for ln in out.strip().splitlines()] + [ln for ln in lines if ln.startswith("warning")]
        text = " / ".join(ctx.clean(ln) for ln in shown)
    else:
        text = ctx.clean(lines[-1]) if lines else "(nothing on stderr)"
        if not lines:
            problem = problem or "no message"
    return f"exit {code}: {msg(text)}", problem


# --- cases ---------------------------------------------------------------------------------------------------


def reader_case(ctx: Context, label: str, build: Callable[[Path], Path | None], name: str) -> Row:
    folder = ctx.folder(name) / PID
    folder.mkdir()
    target = build(folder)
    before = snapshot(folder)
    seen, where, problem = run_reader(ctx, folder, target)
    safe, changed = unchanged(before, folder, "folder")
    return Row(label, where, seen, safe, problem or changed)


def cli_error_case(ctx: Context, label: str, build: Callable[[Path], Path], name: str,
                   weights: Path | None = None) -> Row:
    base = ctx.folder(name)
    source = build(base)
    before = snapshot(source)
    out = base / "out"
    code, stdout, stderr = segment(ctx, source, out, weights=weights)
    seen, problem = cli_seen(ctx, code, stdout, stderr)
    safe_in, changed = unchanged(before, source, "input")
    if os.path.lexists(out):
        return Row(label, "CLI segment", seen, f"no (OUT was created: {sorted(snapshot(out))[:3]})",
                   problem or "OUT written on error")
    return Row(label, "CLI segment", seen, "yes (OUT folder absent; " + safe_in.removeprefix("yes ("),
               problem or changed)


def reader_cases(ctx: Context) -> list[Row]:
    from napari_lgg_seg import io

    rows = []

    def empty(folder: Path) -> None:
        return None

    def no_tiffs(folder: Path) -> None:
        (folder / f"{PID}_1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (folder / "notes.txt").write_text("scan notes")

    def images_only(folder: Path) -> None:
        write_patient(folder, masks=False)

    def masks_only(folder: Path) -> None:
        write_patient(folder)
        for f in folder.glob(f"{PID}_?.tif"):
            f.unlink()

    def sizes(folder: Path) -> None:
        write_patient(folder, size=32)
        write_patient(folder, n=1, size=48, numbers=[4], seed=1)

    def duplicates(folder: Path) -> None:
        write_patient(folder)
        shutil.copyfile(folder / f"{PID}_1.tif", folder / f"{PID}_01.tif")

    def non_numeric(folder: Path) -> None:
        write_patient(folder)
        shutil.copyfile(folder / f"{PID}_1.tif", folder / f"{PID}_a.tif")
        shutil.copyfile(folder / f"{PID}_2.tif", folder / f"{PID}_2_copy.tif")

    def gaps(folder: Path) -> None:
        write_patient(folder, numbers=[1, 2, 5])

    def truncated(folder: Path) -> None:
        write_patient(folder)
        data = (folder / f"{PID}_2.tif").read_bytes()
        (folder / f"{PID}_2.tif").write_bytes(data[: len(data) // 2])

    def random_bytes(folder: Path) -> None:
        write_patient(folder)
        (folder / f"{PID}_2.tif").write_bytes(np.random.default_rng(0).bytes(4096))

    def large(folder: Path) -> None:
        side = 5000
        assert side * side > io.MAX_SLICE_PIXELS, "raise the side above the reader's limit"
        tifffile.imwrite(folder / f"{PID}_1.tif", np.zeros((side, side), np.uint8), photometric="minisblack")

    def unreadable(folder: Path) -> None:
        write_patient(folder)
        os.chmod(folder / f"{PID}_2.tif", 0)

    def loop_named_slice(folder: Path) -> None:
        write_patient(folder)
        os.symlink(f"{PID}_4.tif", folder / f"{PID}_4.tif")  # a link to itself

    cases: list[tuple[str, Callable, str]] = [
        ("empty folder", empty, "empty"),
        ("folder without TIFFs (a .png and a .txt)", no_tiffs, "no_tiffs"),
        ("images without masks", images_only, "images_only"),
        ("masks without images", masks_only, "masks_only"),
        ("slices of different sizes (32x32 and 48x48)", sizes, "sizes"),
        ("duplicate slice numbers (_1 and _01)", duplicates, "duplicates"),
        ("non-numeric slice names (_a, _2_copy)", non_numeric, "non_numeric"),
        ("gaps in slice numbers (1, 2, 5)", gaps, "gaps"),
        ("truncated TIFF (second slice cut in half)", truncated, "truncated"),
        ("random bytes named .tif", random_bytes, "random"),
        ("16-bit images", lambda f: write_patient(f, convert=lambda a: a.astype(np.uint16) * 257), "uint16"),
        ("float32 images", lambda f: write_patient(f, convert=lambda a: a.astype(np.float32) / 255), "float32"),
        ("single-channel images (H x W)", lambda f: write_patient(f, convert=lambda a: a[..., 1]), "single"),
        ("RGBA images", lambda f: write_patient(
            f, convert=lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], -1)), "rgba"),
        ("very large slice (5000 x 5000 uint8, > io.MAX_SLICE_PIXELS)", large, "large"),
        ("symlink loop named like a slice (_4.tif -> itself)", loop_named_slice, "loop_slice"),
    ]
    for label, build, name in cases:
        rows.append(reader_case(ctx, label, build, name))
    rows.append(unreadable_case(ctx, unreadable))
    return rows


_READ_AS_USER = """
import sys, warnings
from napari_lgg_seg.io import LGGFormatError, load_patient
warnings.simplefilter("ignore")
try:
    p = load_patient(sys.argv[1])
    print(f"opens: {p.images.shape[0]} slices")
except LGGFormatError as err:
    print(f"error: {err}")
"""


def unreadable_case(ctx: Context, build: Callable[[Path], None]) -> Row:
    """chmod 000 on a slice. Root reads anything, so as root the reader runs in a child process without the
    capabilities that bypass file permissions (``setpriv``), as an ordinary user would."""
    label = "unreadable file (chmod 000 on a slice)"
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return reader_case(ctx, label, lambda f: build(f), "unreadable")
    if not shutil.which("setpriv"):
        return Row(label, "reader", "not testable: running as root without setpriv", "n/a")
    import subprocess

    folder = ctx.folder("unreadable") / PID
    build(folder)
    before = snapshot(folder)
    caps = "-dac_override,-dac_read_search"
    result = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-c",
                             _READ_AS_USER, str(folder)], capture_output=True, text=True, timeout=120)
    seen = ctx.clean(result.stdout.strip() or result.stderr.strip())
    problem = "traceback" if "Traceback" in result.stderr else ("" if seen.startswith("error:") else "opened")
    safe, changed = unchanged(before, folder, "folder")
    return Row(label, "reader (run as root without the read-override capabilities)", msg(seen), safe,
               problem or changed)


def symlink_loop_root(ctx: Context) -> Row:
    """A dataset root holding a link to itself and two links pointing at each other."""
    from napari_lgg_seg._reader import napari_get_reader
    from napari_lgg_seg.io import find_patient_folders

    root = ctx.folder("loop_root")
    write_patient(root / PID)
    os.symlink(root, root / "self_link")
    os.symlink(root / "b", root / "a")
    os.symlink(root / "a", root / "b")
    os.symlink("..", root / PID / "parent_link")
    before = snapshot(root)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["folders"] = [p.name for p in find_patient_folders(root)]
            result["reader"] = napari_get_reader(str(root)) is not None
        except Exception as err:  # noqa: BLE001
            result["error"] = f"{type(err).__name__}: {err}"

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(30)
    seconds = time.perf_counter() - start
    if thread.is_alive():
        return Row("symlink loop in a dataset root", "reader", "HANGS (> 30 s)", "n/a", "find_patient_folders hangs")
    if "error" in result:
        seen, problem = f"RAW {msg(ctx.clean(result['error']))}", "find_patient_folders raised"
    else:
        when = "at once (< 1 s)" if seconds < 1 else f"after {seconds:.0f} s"
        seen = (f"find_patient_folders returns {when}: {result['folders']}; napari reader "
                f"{'offers to open the root' if result['reader'] else 'declines'}")
        problem = "" if result["folders"] == [PID] else "loop links listed as patients"
    safe, changed = unchanged(before, root, "root")
    return Row("symlink loop in a dataset root (self link, a<->b, patient/.. link)", "reader", seen, safe,
               problem or changed)


def _id_patient(pid: str) -> Callable[[Path], Path]:
    def build(base: Path) -> Path:
        import tifffile

        folder = base / pid[:40]
        folder.mkdir()
        tifffile.imwrite(folder / f"{pid}_1.tif", np.full((16, 16, 3), 50, np.uint8))
        return folder
    return build


def _cli_overwrite_onto_input(ctx: Context) -> Row:
    """segment --out PARENT --overwrite on a patient folder holding a folder / dangling link named like another
    patient's slice: the guard and the writer must agree on the patient id (io.folder_patient_id)."""
    import tifffile

    parent = ctx.folder("cli_onto_input")
    folder = parent / PID
    folder.mkdir()
    for k in (1, 2):
        tifffile.imwrite(folder / f"{PID}_{k}.tif", np.full((16, 16, 3), 50, np.uint8))
    (folder / "A_1.tif").mkdir()
    (folder / "A_2.tif").symlink_to(parent / "nowhere.tif")
    before = snapshot(folder)
    code, stdout, stderr = segment(ctx, folder, parent, "--overwrite")
    seen, problem = cli_seen(ctx, code, stdout, stderr)
    safe, changed = unchanged(before, folder, "input")
    return Row("segment --out PARENT --overwrite, the patient folder also holding a folder and a dangling link named "
               "like another patient's slice (A_1.tif)", "CLI segment", seen, safe, problem or changed)


def cli_cases(ctx: Context) -> list[Row]:
    rows = [
        cli_error_case(ctx, "patient id with spaces ('TCGA CS 4943': outputs could not keep the name)",
                       _id_patient("TCGA CS 4943"), "cli_spaces"),
        cli_error_case(ctx, "patient id of 238 characters (too long for output file names)", _id_patient("x" * 238),
                       "cli_long"),
        _cli_overwrite_onto_input(ctx),
        cli_error_case(ctx, "empty folder", _empty_patient, "cli_empty"),
        cli_error_case(ctx, "random bytes named .tif (single patient)", _random_patient, "cli_random"),
        _cli_partial_root(ctx),
        _cli_odd_size(ctx),
        _cli_out_has_patient(ctx),
        _cli_skip_existing_foreign(ctx),
        _segment_output_source_gone(ctx),
    ]
    return rows


def _empty_patient(base: Path) -> Path:
    (base / PID).mkdir()
    return base / PID


def _loop_slice_patient(base: Path) -> Path:
    folder = write_patient(base / PID)
    os.symlink(f"{PID}_4.tif", folder / f"{PID}_4.tif")
    return folder


def _random_patient(base: Path) -> Path:
    folder = write_patient(base / PID)
    (folder / f"{PID}_2.tif").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


def _cli_partial_root(ctx: Context) -> Row:
    """A dataset root with one good and one damaged patient: the good one is written, the command says which failed."""
    base = ctx.folder("cli_partial")
    root = base / "root"
    write_patient(root / PID)
    bad = root / "BAD_02_20000101"
    bad.mkdir()
    (bad / "BAD_02_20000101_1.tif").write_bytes(b"II*\x00garbage")
    before = snapshot(root)
    out = base / "out"
    code, stdout, stderr = segment(ctx, root, out)
    seen, problem = cli_seen(ctx, code, stdout, stderr)
    skipped = [ctx.clean(ln) for ln in stderr.splitlines() if "skipped" in ln]
    if skipped:
        seen += f"; before it: {msg(skipped[0], 120)}"
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    safe, changed = unchanged(before, root, "input")
    safe = f"{safe[:-1]}; OUT holds only {written})" if safe.startswith("yes") else safe
    if written != [PID]:
        problem = problem or f"OUT holds {written}"
    return Row("dataset root with one good and one damaged patient", "CLI segment", seen, safe, problem or changed)


def _cli_odd_size(ctx: Context) -> Row:
    base = ctx.folder("cli_odd")
    source = write_patient(base / PID, size=(200, 180))
    out = base / "out"
    code, stdout, stderr = segment(ctx, source, out)
    seen, problem = cli_seen(ctx, code, stdout, stderr, expect_error=False)
    shapes = sorted({tifffile.imread(f).shape for f in (out / PID).glob("*_mask.tif")}) if code == 0 else []
    seen += f"; written masks are {' '.join('x'.join(map(str, s)) for s in shapes) or 'missing'}"
    if code != 0 or shapes != [(200, 180)]:
        problem = problem or f"masks {shapes}, exit {code}"
    images_written = sorted(p.name for p in (out / PID).glob("*.tif") if not p.name.endswith("_mask.tif"))
    safe = "yes (masks only in OUT; input untouched)" if not images_written else f"no (images written {images_written})"
    return Row("200 x 180 slices (random-weight tiny model)", "CLI segment", seen, safe, problem)


def _cli_out_has_patient(ctx: Context) -> Row:
    base = ctx.folder("cli_exists")
    source = write_patient(base / PID)
    out = base / "out"
    first = segment(ctx, source, out)
    before = snapshot(out)
    code, stdout, stderr = segment(ctx, source, out)
    seen, problem = cli_seen(ctx, code, stdout, stderr)
    if first[0] != 0:
        problem = problem or "first run failed"
    safe, changed = unchanged(before, out, "OUT")
    return Row("OUT already holds the patient (no --overwrite)", "CLI segment", seen, safe, problem or changed)


def _cli_skip_existing_foreign(ctx: Context) -> Row:
    base = ctx.folder("cli_skip_foreign")
    source = write_patient(base / PID)
    out = base / "out"
    (out / PID).mkdir(parents=True)
    (out / PID / "notes.txt").write_text("the user's own")
    before = snapshot(out)
    code, stdout, stderr = segment(ctx, source, out, "--skip-existing")
    seen, problem = cli_seen(ctx, code, stdout, stderr)
    safe, changed = unchanged(before, out, "OUT")
    return Row("--skip-existing, OUT holds a folder of that name that segment did not write", "CLI segment", seen,
               safe, problem or changed)


def _segment_output_source_gone(ctx: Context) -> Row:
    """A segment output folder (masks only) opened in napari after its source images were moved away."""
    from napari_lgg_seg._reader import napari_get_reader

    base = ctx.folder("reader_source_gone")
    source = write_patient(base / PID)
    out = base / "out"
    code = segment(ctx, source, out)[0]
    shutil.move(str(source), str(base / "moved"))
    before = snapshot(out)
    problem = "" if code == 0 else "segment failed"
    reader = napari_get_reader(str(out / PID))
    if reader is None:
        seen, problem = "declined (napari shows its own message)", problem or "the reader declined its own output"
    else:
        try:
            reader(str(out / PID))
            seen, problem = "opened", problem or "opened without its images"
        except Exception as err:  # noqa: BLE001 - the message is the finding
            seen = f"error: {msg(ctx.clean(err))}"
            if type(err).__name__ != "LGGFormatError":
                problem = problem or f"raised {type(err).__name__}"
    safe, changed = unchanged(before, out, "output")
    return Row("segment output folder opened after its source images moved", "reader", seen, safe,
               problem or changed)


class _WouldRunCode:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def checkpoint_cases(ctx: Context) -> list[Row]:
    import torch

    from napari_lgg_seg.model import CheckpointError, ModelConfig, UNet, checkpoint_dict, load_model

    base = ctx.folder("checkpoints")
    rows: list[Row] = []

    def run(label: str, path: Path, extra_check: Callable[[], tuple[str, str]] | None = None) -> None:
        before = snapshot(base)
        problem = ""
        try:
            loaded = load_model(path)
            seen = f"loads ({type(loaded.model).__name__})"
            problem = "accepted"
        except CheckpointError as err:
            seen = f"error: {msg(ctx.clean(err))}"
        except Exception as err:  # noqa: BLE001
            seen = f"RAW {type(err).__name__}: {msg(ctx.clean(err))}"
            problem = f"load_model raised {type(err).__name__} instead of CheckpointError"
        safe, changed = unchanged(before, base, "checkpoint folder")
        if extra_check is not None:
            note, extra_problem = extra_check()
            safe = f"{safe}; {note}"
            changed = changed or extra_problem
        rows.append(Row(label, "checkpoint (load_model)", seen, safe, problem or changed))

    shapes = checkpoint_dict(UNet(ModelConfig.from_dict(TINY)))
    shapes["model_config"] = ModelConfig.from_dict({"features": [8, 16, 32, 64], "bottleneck": 64}).to_dict()
    torch.save(shapes, base / "wrong_shapes.pt")
    run("checkpoint: config and weight shapes disagree", base / "wrong_shapes.pt")

    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 2)).state_dict(), base / "other_net.pt")
    run("checkpoint: another architecture (bare state dict)", base / "other_net.pt")

    truncated = make_checkpoint(base / "truncated.pt")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    run("checkpoint: truncated file", truncated)

    marker, control_marker = base / "MARKER_created_by_pickle", base / "MARKER_control"
    torch.save({"state_dict": _WouldRunCode(marker)}, base / "evil.pt")
    torch.save({"state_dict": _WouldRunCode(control_marker)}, ctx.root / "evil_control.pt")

    def marker_check() -> tuple[str, str]:
        with contextlib.suppress(Exception):  # control: the unsafe loader does run the code
            torch.load(ctx.root / "evil_control.pt", weights_only=False)
        control = control_marker.exists()
        if marker.exists():
            return "marker file CREATED", "pickle ran code"
        return (f"marker file absent (control: torch.load(weights_only=False) "
                f"{'creates its marker' if control else 'did not create its marker'})",
                "" if control else "control did not run: the test pickle is ineffective")

    run("checkpoint: pickle whose __reduce__ would create a marker file", base / "evil.pt", marker_check)

    make_checkpoint(base / "one_channel.pt", in_channels=1)
    run("checkpoint: 1 input channel", base / "one_channel.pt")

    rows.append(cli_error_case(ctx, "checkpoint with 1 input channel, via CLI segment",
                               lambda b: write_patient(b / PID), "cli_one_channel",
                               weights=base / "one_channel.pt"))
    return rows


def export_case(ctx: Context) -> Row:
    from napari_lgg_seg.export import export_corrected_patient
    from napari_lgg_seg.io import load_patient

    base = ctx.folder("export")
    source = write_patient(base / "src" / PID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patient = load_patient(source)
    out = base / "out"
    export_corrected_patient(out, patient.masks, patient.metadata(), images=patient.images)
    before = snapshot(out)
    edited = patient.masks.copy()
    edited[:, :4, :4] = 1
    problem = ""
    try:
        export_corrected_patient(out, edited, patient.metadata(), images=patient.images)
        seen, problem = "written (existing export replaced)", "overwrote without asking"
    except FileExistsError as err:
        seen = f"FileExistsError: {msg(ctx.clean(err))}"
    except Exception as err:  # noqa: BLE001
        seen, problem = f"RAW {type(err).__name__}: {msg(ctx.clean(err))}", "unexpected exception"
    safe, changed = unchanged(before, out, "existing export")
    return Row("export onto an existing patient folder (overwrite=False)", "export (export_corrected_patient)",
               seen, safe, problem or changed)


def _issue12_cli(ctx: Context, command: str, *args: str | Path) -> tuple[str, str]:
    code, out, err = run_cli(ctx, command, *args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    problem = ""
    if "Traceback" in err:
        problem = "the CLI printed a traceback"
    elif code != 2 or not (lines and lines[-1].startswith(f"napari-lgg-seg {command}: error: ")):
        problem = f"exit code {code}, expected 2 and one error line"
    return f"exit {code}: {msg(ctx.clean(lines[-1]) if lines else '(nothing on stderr)')}", problem


def hidden_and_linked_patients_case(ctx: Context) -> Row:
    """A killed export's ``.P.partial-1234`` (with slices) and a link to a patient inside the same root."""
    from napari_lgg_seg.data import index_patients, split_patients

    root = ctx.folder("hidden_root")
    write_patient(root / PID)
    write_patient(root / "BAD_02_20000101")
    for f in (root / "BAD_02_20000101").iterdir():
        f.rename(f.with_name(f.name.replace(PID, "BAD_02_20000101")))
    shutil.copytree(root / PID, root / f".{PID}.partial-1234")
    os.symlink(root / PID, root / "ZZ_link")
    before = snapshot(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = index_patients([root])
        split = split_patients(list(index), val_fraction=0.5, seed=0)
    every = split["train"] + split["val"] + split["test"]
    problem = "" if sorted(every) == sorted([PID, "BAD_02_20000101"]) else f"split holds {every}"
    notes = "; ".join(f"warning: {msg(ctx.clean(w.message))}" for w in caught)
    seen = f"{len(index)} patients indexed, each once in the split, the hidden folder never; {notes}"
    safe, changed = unchanged(before, root, "root")
    return Row("dataset root with a killed export's .P.partial-1234 (slices inside) and a link to a patient",
               "train / evaluate (data.index_patients, split_patients)", seen, safe, problem or changed)


def _racing_export(root: str, barrier, seed: int, results) -> None:
    from napari_lgg_seg import io as lgg_io
    from napari_lgg_seg.sample import make_phantom

    images, masks = make_phantom(n_slices=3, size=16, seed=seed)
    real_write, calls = lgg_io._write_tiff, [0]

    def write(path, array):
        real_write(path, array)
        calls[0] += 1
        if calls[0] == 2 * len(masks):
            barrier.wait(timeout=60)  # both writers reach the final rename together

    lgg_io._write_tiff = write
    try:
        lgg_io.write_patient_folder(root, PID, masks, images=images, sidecar={"writer": seed})
        results.put(("ok", str(seed)))
    except FileExistsError as err:
        results.put(("refused", str(err)))
    except BaseException as err:  # noqa: BLE001
        results.put(("other", f"{type(err).__name__}: {err}"))


def concurrent_export_case(ctx: Context) -> Row:
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    barrier, results = mp.Barrier(2), mp.Queue()
    root = ctx.folder("race") / "out"
    procs = [mp.Process(target=_racing_export, args=(str(root), barrier, seed, results)) for seed in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    outcomes = sorted(results.get(timeout=10) for _ in procs)
    kinds = [o[0] for o in outcomes]
    problem = "" if kinds == ["ok", "refused"] else f"outcomes {kinds}"
    seen = (f"one writes, the other: FileExistsError: {msg(ctx.clean(outcomes[1][1]))}" if not problem
            else f"{outcomes}")
    entries = sorted(p.name for p in root.iterdir())
    complete = len(list((root / PID).glob("*_mask.tif"))) == 3 if (root / PID).is_dir() else False
    safe = (f"yes (the winner's folder is complete, no temporary folder left: {entries})"
            if complete and entries == [PID] else f"no ({entries})")
    return Row("two exports of the same patient at the same moment (two processes, overwrite off)",
               "export / segment (io.write_patient_folder)", seen, safe,
               problem or ("" if safe.startswith("yes") else "incomplete or leftovers"))


def export_overwrite_cases(ctx: Context) -> list[Row]:
    from napari_lgg_seg.export import export_corrected_patient
    from napari_lgg_seg.io import load_patient

    rows = []
    base = ctx.folder("export_overwrite")
    source = write_patient(base / "data" / PID)
    (source / "notes.txt").write_text("mine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patient = load_patient(source)
    for label, out, prepare in (
        ("export with overwrite into the root the patient was read from", base / "data", None),
        ("export with overwrite onto a folder holding files the plugin did not write (notes.txt, no sidecar)",
         base / "other", lambda: write_patient(base / "other" / PID) and (base / "other" / PID / "notes.txt")
         .write_text("mine")),
    ):
        if prepare:
            prepare()
        before = snapshot(out)
        problem = ""
        try:
            export_corrected_patient(out, np.ones_like(patient.masks), patient.metadata(), images=patient.images,
                                     overwrite=True)
            seen, problem = "written (folder replaced)", "replaced a folder the plugin did not write"
        except FileExistsError as err:
            seen = f"FileExistsError: {msg(ctx.clean(err))}"
        safe, changed = unchanged(before, out, "folder")
        rows.append(Row(label, "export (export_corrected_patient, export dock)", seen, safe, problem or changed))
    return rows


def existing_outputs_cases(ctx: Context) -> list[Row]:
    base = ctx.folder("existing_outputs")
    demo_out = base / "demo"
    demo_out.mkdir()
    (demo_out / "overview.png").write_bytes(b"the user's picture")
    before = snapshot(demo_out)
    seen, problem = _issue12_cli(ctx, "demo", "--headless", "--device", "cpu", "--out", demo_out)
    safe, changed = unchanged(before, demo_out, "folder")
    rows = [Row("demo --out d where d/overview.png exists", "CLI demo", seen, safe, problem or changed)]
    data = ctx.folder("existing_outputs_data")
    write_patient(data / PID)
    eval_out = base / "eval"
    eval_out.mkdir()
    (eval_out / "summary.json").write_text("mine")
    (eval_out / "per_patient.csv").write_text("mine")
    before = snapshot(eval_out)
    seen, problem = _issue12_cli(ctx, "evaluate", "--data", data, "--weights", ctx.checkpoint(), "--device", "cpu",
                                 "--out", eval_out)
    safe, changed = unchanged(before, eval_out, "folder")
    rows.append(Row("evaluate --out where summary.json / per_patient.csv exist", "CLI evaluate", seen, safe,
                    problem or changed))
    return rows


def recovery_ids_case(ctx: Context) -> Row:
    from napari_lgg_seg import recovery

    old = os.environ.get(recovery.ENV_VAR)
    os.environ[recovery.ENV_VAR] = str(ctx.folder("recovery"))
    try:
        a, b = "TCGA CS 4943", "TCGA_CS_4943"
        recovery.save_recovery(a, np.zeros((1, 4, 4), np.uint8))
        recovery.save_recovery(b, np.ones((1, 4, 4), np.uint8))
        got_a, got_b = recovery.load_recovery(a), recovery.load_recovery(b)
        ok = got_a is not None and got_b is not None and got_a.mask.sum() == 0 and got_b.mask.sum() == 16
        names = sorted(p.name for p in recovery.recovery_dir().iterdir())
    finally:
        if old is None:
            os.environ.pop(recovery.ENV_VAR, None)
        else:
            os.environ[recovery.ENV_VAR] = old
    return Row('autosave of patients "TCGA CS 4943" and "TCGA_CS_4943" (ids that sanitise alike)',
               "segment / export docks (recovery)", f"two files ({', '.join(names)}); each patient is offered its "
               "own edits; a file holding another patient id is not offered (warning)",
               "yes (each patient's edits restored)" if ok else "no (edits mixed up)", "" if ok else "edits lost")


def reader_pages_colour_gaps_umask_cases(ctx: Context) -> list[Row]:
    """issue 12, readers: multi-page files, colour masks, a huge slice-number gap, output folder permissions."""
    import tifffile

    from napari_lgg_seg.io import LGGFormatError, load_patient, read_tiff, write_patient_folder

    rows = []
    folder = ctx.folder("pages")
    for v in (10, 20, 30):
        tifffile.imwrite(folder / "P_1.tif", np.full((8, 8), v, np.uint8), append=True)
    got = read_tiff(folder / "P_1.tif")[0, 0].tolist()
    rows.append(Row("slice saved as 3 single-channel pages", "reader", f"read as (pre, FLAIR, post) = {got}",
                    "yes" if got == [10, 20, 30] else "no", "" if got == [10, 20, 30] else "wrong channels"))
    for _ in range(4):
        tifffile.imwrite(folder / "P_2.tif", np.zeros((8, 8), np.uint8), append=True)
    try:
        read_tiff(folder / "P_2.tif")
        rows.append(Row("4-page volume in one slice file", "reader", "opened as one slice", "no", "pages lost"))
    except LGGFormatError as err:
        rows.append(Row("4-page volume in one slice file", "reader", msg(ctx.clean(str(err))), "yes (nothing read)"))
    colour = ctx.folder("colour") / "P"
    colour.mkdir()
    tifffile.imwrite(colour / "P_1.tif", np.full((8, 8, 3), 50, np.uint8))
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[2:4, 2:4, 1] = 255
    tifffile.imwrite(colour / "P_1_mask.tif", mask)
    n = int(load_patient(colour).masks.sum())
    rows.append(Row("mask drawn in colour (tumour in the green channel)", "reader", f"{n} tumour pixels (any "
                    "non-zero channel counts)", "yes" if n == 4 else "no", "" if n == 4 else "empty ground truth"))
    gap = ctx.folder("gap") / "P"
    gap.mkdir()
    for k in (1, 100_000_000_000):
        tifffile.imwrite(gap / f"P_{k}.tif", np.full((8, 8, 3), 50, np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_patient(gap)
    rows.append(Row("slices numbered 1 and 100000000000", "reader", "warning: " + msg(str(caught[0].message)) if caught
                    else "no warning", "yes (read; gap check in O(files))"))
    old = os.umask(0o022)
    try:
        out = write_patient_folder(ctx.folder("umask"), "P", np.zeros((1, 8, 8), np.uint8),
                                   images=np.full((1, 8, 8, 3), 50, np.uint8))
    finally:
        os.umask(old)
    mode = oct(Path(out).stat().st_mode & 0o777)
    rows.append(Row("output patient folder with umask 022", "export / segment writers", f"folder mode {mode}",
                    "yes" if mode == "0o755" else "no", "" if mode == "0o755" else "mode 0700 (mkdtemp)"))
    return rows


# --- output --------------------------------------------------------------------------------------------------


def cell(text: str, code: bool = False) -> str:
    text = re.sub(r"\s+", " ", str(text)).replace("`", "'")
    text = text.replace("|", "\\|")
    if code:
        return f"`{text}`"
    return text.replace("<", "&lt;").replace(">", "&gt;")


def seen_cell(text: str) -> str:
    """Outcome words in plain text, messages marked by ``msg`` as code (so <PATIENT> and paths show as typed)."""
    parts = re.split("\x02(.*?)\x03", text)
    return "".join(cell(part, code=i % 2 == 1) for i, part in enumerate(parts) if part).strip()


def training_full_disk_case(ctx: Context) -> Row:
    """``napari-lgg-seg train --resume`` when the disk fills up while epoch 2's checkpoints are saved."""
    from napari_lgg_seg._testing import disk_full_on_atomic_writes
    from napari_lgg_seg.config import TrainConfig
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.training import train

    label = "disk full while a training run writes its files (every write fails half-way with ENOSPC)"
    base = ctx.folder("full_disk")
    data = base / "data"
    write_phantom_dataset(data, n_patients=3, n_slices=6, size=64, seed=0)
    config = TrainConfig(model_features=TINY["features"], model_bottleneck=TINY["bottleneck"], image_size=64,
                         crop_size=None, batch_size=2, epochs=1, steps_per_epoch=2, val_fraction=0.34,
                         num_threads=1, precision="fp32", scheduler="plateau", seed=0)
    run = base / "run"
    for _ in train(config, [str(data)], run):  # epoch 1 saves normally
        pass
    before = snapshot(run)
    with disk_full_on_atomic_writes():
        code, out, err = run_cli(ctx, "train", "--data", data, "--out", run, "--resume", "--epochs", "2")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    seen = f"exit {code}: {msg(ctx.clean(lines[-1]) if lines else '(nothing on stderr)')}"
    if "Traceback" in err:
        problem = "traceback"
    elif code != 2 or "No space left" not in err:
        problem = f"exit code {code}, expected 2 and the disk-full reason"
    else:
        problem = ""
    after = snapshot(run)
    kept = {k: v for k, v in before.items() if k.endswith(".pt")}
    torn = [k for k in after if k.endswith(".tmp")]
    if any(after.get(k) != v for k, v in kept.items()) or torn:
        return Row(label, "CLI train", seen, f"no (checkpoints changed or temporary files left: {torn})",
                   problem or "data changed")
    code, _, err = run_cli(ctx, "train", "--data", data, "--out", run, "--resume", "--epochs", "2")
    resumed = "resumes to epoch 2 afterwards" if code == 0 else f"resume failed: {msg(ctx.clean(err))}"
    return Row(label, "CLI train", seen, f"yes (best.pt and last.pt of epoch 1 byte-identical, no temporary "
               f"files; {resumed})", problem or ("" if code == 0 else "resume failed"))


# === BEGIN issue 12: validated numbers (cards, options, configs), non-finite results, run folders, resumes ===
# (kept in one block so that it merges cleanly with other rows added in parallel)


def _i12_seen(ctx: Context, command: str, code, out: str, err: str, expect_error: bool = True) -> tuple[str, str]:
    """What ``napari-lgg-seg COMMAND`` shows, and a problem note unless it is one clean error line with exit 2."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    problem = ""
    if "Traceback" in err:
        problem = "the CLI printed a traceback"
    elif expect_error and code != 2:
        problem = f"exit code {code}, expected 2"
    elif expect_error and not (lines and lines[-1].startswith(f"napari-lgg-seg {command}: error: ")):
        problem = f"the last stderr line is not 'napari-lgg-seg {command}: error: ...'"
    if code == 0:
        shown = [ln for ln in out.strip().splitlines() if ln.strip()][-1:]
        shown += [ln for ln in lines if ln.startswith("warning")]
        return f"exit 0: {msg(' / '.join(ctx.clean(ln) for ln in shown), 320)}", problem
    return f"exit {code}: {msg(ctx.clean(lines[-1]) if lines else '(nothing on stderr)', 240)}", \
        problem or ("" if lines else "no message")


def _i12_tiny_config(**kw):
    from napari_lgg_seg.config import TrainConfig

    base = dict(model_features=TINY["features"], model_bottleneck=TINY["bottleneck"], image_size=64, crop_size=None,
                batch_size=2, epochs=1, steps_per_epoch=2, val_fraction=0.34, num_threads=1, precision="fp32",
                scheduler="plateau", seed=0)
    return TrainConfig(**{**base, **kw})


def _i12_toml(path: Path, **values) -> Path:
    import json

    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def issue12_validation_cases(ctx: Context) -> list[Row]:
    """Checkpoint cards, options and config files with wrong types or ranges; NaN weights; run folders that
    hold checkpoints; inconsistent resumes; a validation set without tumour."""
    import torch

    from napari_lgg_seg.model import ModelConfig, UNet, checkpoint_dict
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.training import train

    base = ctx.folder("issue12")
    rows: list[Row] = []
    data = base / "data"
    write_phantom_dataset(data, n_patients=3, n_slices=6, size=64, seed=0)
    patient = sorted(p for p in data.iterdir() if p.is_dir())[0]

    def card(name: str, **parts) -> Path:
        torch.manual_seed(0)
        ckpt = checkpoint_dict(UNet(ModelConfig.from_dict(TINY)), config={"image_size": 64})
        ckpt.update(parts)
        torch.save(ckpt, base / name)
        return base / name

    def segment_case(label: str, weights: Path) -> None:
        out = base / f"out_{weights.stem}"
        before = snapshot(patient)
        code, stdout, stderr = run_cli(ctx, "segment", patient, "--out", out, "--weights", weights,
                                       "--device", "cpu")
        seen, problem = _i12_seen(ctx, "segment", code, stdout, stderr)
        safe, changed = unchanged(before, patient, "input")
        if os.path.lexists(out):
            safe, changed = "no (OUT was created)", changed or "OUT written on error"
        rows.append(Row(label, "CLI segment (model.load_model validates the card)", seen, safe, problem or changed))

    for label, name, parts in [
        ("card threshold 1.5 (was: 0 voxels, exit 0)", "thr15.pt", {"meta": {"inference": {"threshold": 1.5}}}),
        ("card threshold -1 (was: every voxel tumour, exit 0)", "thrm1.pt", {"meta": {"inference": {"threshold": -1}}}),
        ("card threshold \"0.7\" (a string)", "thrstr.pt", {"meta": {"inference": {"threshold": "0.7"}}}),
        ("card min_lesion_voxels \"50\" (a string)", "minles.pt", {"meta": {"inference": {"min_lesion_voxels": "50"}}}),
        ("card inference as a string", "infstr.pt", {"meta": {"inference": "threshold=0.5"}}),
        ("card meta as a list", "metalist.pt", {"meta": [1, 2]}),
        ("card config: 5", "config5.pt", {"config": 5}),
        ("card negative features", "negfeat.pt", {"model_config": {**TINY, "features": [-4, 8, 16, 32]}}),
        ("card bottleneck 10**6 (was: tried to allocate 36 TB)", "bneck.pt",
         {"model_config": {**TINY, "bottleneck": 10**6}}),
        ("card 8 levels of 4096 channels (6.7 G parameters)", "huge.pt",
         {"model_config": {**TINY, "features": [4096] * 8, "bottleneck": 4096}}),
        ("card image_size 1 (was: evaluate Dice 0.000, segment 0.918)", "size1.pt", {"config": {"image_size": 1}}),
        ("card image_size -256", "sizem256.pt", {"config": {"image_size": -256}}),
    ]:
        segment_case(label, card(name, **parts))

    torch.manual_seed(0)
    net = UNet(ModelConfig.from_dict(TINY))
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    torch.save(checkpoint_dict(net, config={"image_size": 64}), base / "nan.pt")
    segment_case("NaN weights (was: 0 tumour voxels, exit 0)", base / "nan.pt")
    code, stdout, stderr = run_cli(ctx, "evaluate", "--data", data, "--weights", base / "nan.pt", "--device", "cpu")
    seen, problem = _i12_seen(ctx, "evaluate", code, stdout, stderr)
    rows.append(Row("NaN weights", "CLI evaluate", seen, "yes (nothing written)", problem))

    for label, args in [
        ("evaluate --batch-size -1 (was: Dice 0.0, exit 0)", ["evaluate", "--data", data, "--batch-size", "-1"]),
        ("evaluate --batch-size 0 (was: a range() error)", ["evaluate", "--data", data, "--batch-size", "0"]),
        ("segment --batch-size 0", ["segment", patient, "--out", base / "o", "--batch-size", "0"]),
        ("train --steps-per-epoch -1 (was: an untrained best.pt, exit 0)",
         ["train", "--data", data, "--out", base / "r", "--steps-per-epoch", "-1"]),
        ("train --num-threads -1 (was: a traceback)", ["train", "--data", data, "--out", base / "r", "--num-threads", "-1"]),
        ("train --batch-size 0", ["train", "--data", data, "--out", base / "r", "--batch-size", "0"]),
    ]:
        code, stdout, stderr = run_cli(ctx, *args)
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        seen = f"exit {code} (usage error): {msg(ctx.clean(lines[-1]) if lines else '(nothing)')}"
        problem = "" if code == 2 and lines and "Traceback" not in stderr else f"exit {code}"
        written = [p.name for p in (base / "o", base / "r") if os.path.lexists(p)]
        rows.append(Row(label, "CLI option parsing (config.parse_field, shared with config files)", seen,
                        "yes (nothing written)" if not written else f"no ({written} created)",
                        problem or ("written" if written else "")))

    toml = _i12_toml(base / "epochs_str.toml", epochs="3")
    code, stdout, stderr = run_cli(ctx, "train", "--config", toml, "--data", data, "--out", base / "r")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr)
    rows.append(Row("TOML config epochs = \"3\" (was: a traceback)", "CLI train (TrainConfig.from_file)", seen,
                    "yes (nothing written)" if not (base / "r").exists() else "no (run folder created)", problem))

    shipped = base / "shipped"  # a copied shipped model: best.pt and no last.pt
    shipped.mkdir()
    make_checkpoint(shipped / "best.pt")
    before = snapshot(shipped)
    code, stdout, stderr = run_cli(ctx, "train", "--data", data, "--out", shipped, "--epochs", "1")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr)
    safe, changed = unchanged(before, shipped, "run folder")
    rows.append(Row("train --out into a folder holding best.pt only (was: overwritten by a worse model)",
                    "CLI train (training.check_run_folder)", seen, safe, problem or changed))

    run = base / "run"
    for _ in train(_i12_tiny_config(), [str(data)], run):
        pass
    code, stdout, stderr = run_cli(ctx, "train", "--data", data, "--out", run, "--resume", "--epochs", "2",
                                   "--batch-size", "4", "--lr", "0.5")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr, expect_error=False)
    rows.append(Row("train --resume --batch-size 4 --lr 0.5 (was: silently ignored)", "CLI train", seen,
                    "yes (the run continues with its saved config)" if code == 0 else "no", problem))

    partial = base / "partial"
    shutil.copytree(data, partial)
    shutil.rmtree(partial / patient.name)
    before = snapshot(run)
    code, stdout, stderr = run_cli(ctx, "train", "--data", partial, "--out", run, "--resume", "--epochs", "3")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr)
    safe, changed = unchanged(before, run, "run folder")
    rows.append(Row("train --resume with a data root missing a patient of the run (was: KeyError)", "CLI train",
                    seen, safe, problem or changed))

    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    before = snapshot(run)
    code, stdout, stderr = run_cli(ctx, "train", "--data", data, "--out", run, "--resume", "--epochs", "3")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr)
    safe, changed = unchanged(before, run, "run folder")
    rows.append(Row("train --resume with best.pt copied to last.pt (was: KeyError)", "CLI train", seen, safe,
                    problem or changed))

    no_tumour = base / "no_tumour"
    shutil.copytree(data, no_tumour)
    names = sorted(p.name for p in no_tumour.iterdir() if p.is_dir())
    for mask in (no_tumour / names[0]).glob("*_mask.tif"):
        tifffile.imwrite(mask, np.zeros_like(tifffile.imread(mask)))
    toml = _i12_toml(base / "no_tumour.toml", model_features=TINY["features"], model_bottleneck=TINY["bottleneck"],
                     image_size=64, batch_size=2, epochs=1, steps_per_epoch=2, num_threads=1, precision="fp32",
                     val_patients=names[:1], train_patients=names[1:])
    code, stdout, stderr = run_cli(ctx, "train", "--config", toml, "--data", no_tumour, "--out", base / "nt_run")
    seen, problem = _i12_seen(ctx, "train", code, stdout, stderr, expect_error=False)
    has_best = (base / "nt_run" / "best.pt").is_file()
    rows.append(Row("validation patients without tumour (was: best -1.0000, no best.pt, \"checkpoints in ...\")",
                    "CLI train", seen, "yes (best.pt written and selected on the slice Dice)" if has_best else
                    "no (no best.pt)", problem or ("" if has_best else "no best.pt")))
    return rows

# === END issue 12 block ===


def main() -> int:
    import torch

    torch.set_num_threads(1)
    start = time.process_time()
    with tempfile.TemporaryDirectory(prefix="lgg-bad-input-") as tmp:
        ctx = Context(Path(tmp))
        try:
            rows = reader_cases(ctx)
            rows.append(symlink_loop_root(ctx))
            rows += cli_cases(ctx)
            rows += checkpoint_cases(ctx)
            rows.append(export_case(ctx))
            rows.append(training_full_disk_case(ctx))
            rows += issue12_validation_cases(ctx)  # issue 12 block (see BEGIN/END markers above)
            rows.append(hidden_and_linked_patients_case(ctx))
            rows.append(concurrent_export_case(ctx))
            rows += export_overwrite_cases(ctx)
            rows += existing_outputs_cases(ctx)
            rows.append(recovery_ids_case(ctx))
            rows += reader_pages_colour_gaps_umask_cases(ctx)
        finally:
            for dirpath, _, filenames in os.walk(tmp):  # let the clean-up remove chmod-000 files
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not os.path.islink(path):
                        os.chmod(path, 0o600)
    print("# Bad input: what the user sees\n")
    print("Generated by `docs/bad_input_table.py` from synthetic phantoms in a temporary folder (no real data), through "
          "the product's own code paths: `io.load_patient` and the napari reader, `napari-lgg-seg segment` "
          "(`cli.main`, stderr captured), `model.load_model`, `export.export_corrected_patient` and "
          "`napari-lgg-seg train --resume` (a full disk simulated by file writes that fail half-way with ENOSPC). "
          "Regenerate with\n")
    print("```\n.venv/bin/python docs/bad_input_table.py > docs/bad_input.md\n```\n")
    print("Messages are shortened to about 160 characters and temporary paths are replaced by their base name. "
          "\"Nothing written or lost\" is checked, not assumed: the input folder, the checkpoint folder or the "
          "existing output is hashed before and after, and an error must leave no output folder behind. "
          "A CLI error must exit with code 2 and end with one `napari-lgg-seg segment: error: ...` line on "
          "stderr, without a traceback. Cases that break these rules are listed under \"Problems found\" "
          "(the script then exits with status 1).\n")
    print("| input | where | what the user sees | nothing written or lost |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {cell(row.input)} | {cell(row.where)} | {seen_cell(row.seen)} | {cell(row.safe)} |")
    problems = [row for row in rows if row.problem]
    print()
    if problems:
        print("## Problems found\n")
        for row in problems:
            print(f"- {cell(row.input)} ({cell(row.where)}): {cell(row.problem)}")
    else:
        print("No case showed a traceback, an uncaught exception or changed data.")
    print(f"{len(rows)} cases, {time.process_time() - start:.1f} s of CPU", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
