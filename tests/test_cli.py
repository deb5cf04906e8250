"""The ``napari-lgg-seg`` command line: segment, demo, eda wiring and error handling."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import make_tiny_checkpoint
from napari_lgg_seg import cli, demo, model
from napari_lgg_seg.inference import PostProcessing, postprocess, predict_any_size
from napari_lgg_seg.io import load_patient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quiet_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_patient(path)


def read_masks(folder: Path, pid: str, numbers) -> np.ndarray:
    return np.stack([tifffile.imread(folder / f"{pid}_{k}_mask.tif") for k in numbers])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def no_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(model, "DEFAULT_MODEL_PATH", tmp_path / "not_installed.pt")


@pytest.fixture
def carded_checkpoint(tmp_path, phantom_root) -> tuple[Path, float]:
    """A tiny checkpoint whose card threshold is the median probability on the first phantom (so masks are
    neither empty nor full), with hole filling and a minimum lesion size."""
    plain = model.load_model(make_tiny_checkpoint(tmp_path / "plain.pt", seed=3))
    patient = quiet_load(sorted(phantom_root.iterdir())[0])
    probs = predict_any_size(plain.model, patient.images, size=plain.training_size, device="cpu")
    threshold = float(np.median(probs[probs > 0]))
    card = {"inference": {"threshold": threshold, "tta": False, "min_lesion_voxels": 3, "keep_largest": False,
                          "fill_holes": True}}
    return make_tiny_checkpoint(tmp_path / "carded.pt", seed=3, meta=card), threshold


def expected_mask(checkpoint: Path, images: np.ndarray, settings: PostProcessing, tta: bool = False,
                  batch_size: int = 16) -> np.ndarray:
    loaded = model.load_model(checkpoint)
    probs = predict_any_size(loaded.model, images, size=loaded.training_size, device="cpu", tta=tta,
                             batch_size=batch_size)
    return postprocess(probs, settings)


# --- segment ---------------------------------------------------------------------------------


def test_segment_dataset_root(capsys, tmp_path, phantom_root, carded_checkpoint):
    checkpoint, threshold = carded_checkpoint
    out = tmp_path / "masks"
    code, stdout, stderr = run_cli(capsys, "segment", phantom_root, "--out", out, "--weights", checkpoint,
                                   "--device", "cpu", "--batch-size", "5")
    assert code == 0, stderr
    settings = PostProcessing(threshold=threshold, min_lesion_voxels=3, fill_holes=True)
    folders = sorted(p for p in phantom_root.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == [f.name for f in folders]
    for folder in folders:
        patient = quiet_load(folder)
        target = out / patient.patient_id
        assert sorted(p.name for p in target.glob("*.tif")) == sorted(
            f"{patient.patient_id}_{k}_mask.tif" for k in patient.slice_numbers)
        masks = read_masks(target, patient.patient_id, patient.slice_numbers)
        assert masks.shape == patient.images.shape[:3] and masks.dtype == np.uint8
        assert set(np.unique(masks)) <= {0, 255}
        sidecar = json.loads((target / "lgg_seg_export.json").read_text())
        assert sidecar["threshold"] == pytest.approx(threshold) and sidecar["fill_holes"] is True
        assert sidecar["tumour_voxels"] == int(np.count_nonzero(masks))
        assert patient.patient_id in stdout
        if folder == folders[0]:  # the same result as the library calls with the card's settings
            expected = expected_mask(checkpoint, patient.images, settings, batch_size=5)
            np.testing.assert_array_equal(masks > 0, expected > 0)
    first = read_masks(out / folders[0].name, folders[0].name, range(1, 13))
    assert 0 < np.count_nonzero(first) < first.size  # the card threshold gave a non-trivial mask
    assert "Dice vs ground truth" in stdout
    assert "[3/3]" in stderr and "slices" in stderr  # progress on stderr
    assert "written to" in stderr


def test_segment_flags_override_the_card(capsys, tmp_path, phantom_patient, carded_checkpoint):
    checkpoint, threshold = carded_checkpoint
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", out, "--weights", checkpoint,
                           "--device", "cpu", "--threshold", "0.3", "--tta")
    assert code == 0, err
    pid = phantom_patient.name
    patient = quiet_load(phantom_patient)
    masks = read_masks(out / pid, pid, patient.slice_numbers)
    expected = expected_mask(checkpoint, patient.images,
                             PostProcessing(threshold=0.3, min_lesion_voxels=3, fill_holes=True), tta=True)
    np.testing.assert_array_equal(masks > 0, expected > 0)
    assert "threshold 0.3, tta on" in err
    sidecar = json.loads((out / pid / "lgg_seg_export.json").read_text())
    assert sidecar["tta"] is True and sidecar["threshold"] == 0.3


def test_segment_single_slice_path_and_missing_masks(capsys, tmp_path, phantom_patient, tiny_checkpoint):
    for mask in phantom_patient.glob("*_mask.tif"):
        mask.unlink()  # a patient without ground truth
    pid = phantom_patient.name
    code, stdout, err = run_cli(capsys, "segment", phantom_patient / f"{pid}_3.tif", "--out", tmp_path / "o",
                                "--weights", tiny_checkpoint, "--device", "cpu")
    assert code == 0, err
    assert len(list((tmp_path / "o" / pid).glob("*_mask.tif"))) == 12
    assert "Dice" not in stdout


def test_segment_refuses_to_overwrite(capsys, tmp_path, phantom_patient, tiny_checkpoint):
    out = tmp_path / "out"
    assert run_cli(capsys, "segment", phantom_patient, "--out", out, "--weights", tiny_checkpoint)[0] == 0
    mask = next((out / phantom_patient.name).glob("*_mask.tif"))
    mask.write_bytes(b"user's own file")
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", out, "--weights", tiny_checkpoint)
    assert code == 2
    assert "already exists" in err and "--overwrite" in err and "--skip-existing" in err and "Traceback" not in err
    assert mask.read_bytes() == b"user's own file"
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", out, "--weights", tiny_checkpoint,
                           "--overwrite")
    assert code == 0, err
    assert tifffile.imread(mask).dtype == np.uint8


def test_segment_skip_existing_resumes_a_run(capsys, tmp_path, phantom_root, tiny_checkpoint):
    out = tmp_path / "out"
    folders = sorted(phantom_root.iterdir())
    code, _, err = run_cli(capsys, "segment", folders[0], "--out", out, "--weights", tiny_checkpoint)
    assert code == 0, err
    done = out / folders[0].name
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in done.iterdir()}
    (out / f".{folders[1].name}.partial-killed").mkdir()  # what a run killed half-way leaves behind
    code, stdout, err = run_cli(capsys, "segment", phantom_root, "--out", out, "--weights", tiny_checkpoint,
                                "--skip-existing")
    assert code == 0, err
    assert f"{folders[0].name}: already segmented" in err and "skipped" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in done.iterdir()} == kept  # untouched
    assert folders[0].name not in stdout
    for folder in folders[1:]:
        assert len(list((out / folder.name).glob("*_mask.tif"))) == 12 and folder.name in stdout
    assert "masks of 2 patients written" in err and "1 already there" in err
    # everything done: the model is not even loaded
    code, _, err = run_cli(capsys, "segment", phantom_root, "--out", out, "--weights", tmp_path / "missing.pt",
                           "--skip-existing")
    assert code == 0 and "nothing to do" in err


def test_segment_skip_existing_refuses_a_folder_it_did_not_write(capsys, tmp_path, phantom_root, tiny_checkpoint):
    out = tmp_path / "out"
    folders = sorted(phantom_root.iterdir())
    foreign = out / folders[1].name
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "segment", phantom_root, "--out", out, "--weights", tiny_checkpoint,
                           "--skip-existing")
    assert code == 2 and f"{foreign} exists but is not segment's output" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [folders[1].name]  # nothing written before refusing
    assert (foreign / "notes.txt").read_text() == "mine"
    # an earlier output with a mask gone (not what segment leaves) is not taken as done either
    (foreign / "notes.txt").unlink()
    foreign.rmdir()
    assert run_cli(capsys, "segment", folders[1], "--out", out, "--weights", tiny_checkpoint)[0] == 0
    (foreign / f"{folders[1].name}_4_mask.tif").unlink()
    code, _, err = run_cli(capsys, "segment", phantom_root, "--out", out, "--weights", tiny_checkpoint,
                           "--skip-existing")
    assert code == 2 and "exists but is not segment's output" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["segment", str(phantom_root), "--out", str(out), "--skip-existing", "--overwrite"])
    assert info.value.code == 2


def test_segment_output_opens_for_correction_over_its_source(capsys, tmp_path, phantom_patient, tiny_checkpoint):
    from napari_lgg_seg._reader import napari_get_reader

    out = tmp_path / "out"
    assert run_cli(capsys, "segment", phantom_patient, "--out", out, "--weights", tiny_checkpoint)[0] == 0
    pid = phantom_patient.name
    sidecar = json.loads((out / pid / "lgg_seg_export.json").read_text())
    assert sidecar["source_folder"] == str(phantom_patient.resolve())
    layers = {kw["name"]: (data, kw) for data, kw, _ in napari_get_reader(str(out / pid))(str(out / pid))}
    masks = read_masks(out / pid, pid, range(1, 13))
    np.testing.assert_array_equal(layers[f"{pid} tumour"][0], masks > 0)
    assert layers[f"{pid} tumour"][1]["metadata"]["lgg_model"] == str(Path(tiny_checkpoint).resolve())
    np.testing.assert_array_equal(layers[f"{pid} FLAIR"][0], quiet_load(phantom_patient).images[..., 1])


def test_cli_and_demo_do_not_import_each_other():
    import ast

    for module, other in ((cli, "demo"), (demo, "cli")):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
        if module is demo:
            assert other not in imported, imported  # the demo shares the CLI's helpers through .console
    # the CLI dispatches to the demo (one way), the demo never imports the CLI
    assert "demo" in {node.module for node in ast.walk(ast.parse(Path(cli.__file__).read_text()))
                      if isinstance(node, ast.ImportFrom) and node.level}


def test_segment_never_replaces_the_input(capsys, phantom_root, tiny_checkpoint):
    before = sorted(p.name for p in (phantom_root / "PHANTOM_00_20000101").iterdir())
    code, _, err = run_cli(capsys, "segment", phantom_root, "--out", phantom_root, "--weights", tiny_checkpoint,
                           "--overwrite")
    assert code == 2 and "input patient folder" in err
    assert sorted(p.name for p in (phantom_root / "PHANTOM_00_20000101").iterdir()) == before


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda root: root / "absent", "no such file or folder"),
        (lambda root: root / "empty", "no LGG patient folders found"),
        (lambda root: root / "notes.txt", "not a patient folder"),
    ],
)
def test_segment_bad_input(capsys, tmp_path, tiny_checkpoint, make_input, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    code, stdout, err = run_cli(capsys, "segment", make_input(tmp_path), "--out", tmp_path / "out",
                                "--weights", tiny_checkpoint)
    assert code == 2
    assert message in err and "error:" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one clear line
    assert not (tmp_path / "out").exists()


def test_segment_corrupt_checkpoint(capsys, tmp_path, phantom_patient, tiny_checkpoint):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", tmp_path / "out", "--weights", bad)
    assert code == 2
    assert "bad.pt" in err and "not a readable PyTorch checkpoint" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", tmp_path / "out",
                           "--weights", tmp_path / "absent.pt")
    assert code == 2 and "checkpoint file not found" in err
    assert not (tmp_path / "out").exists()


def test_segment_without_default_model(capsys, tmp_path, phantom_patient, no_default_model):
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", tmp_path / "out")
    assert code == 2
    assert "no default model is installed; pass --weights" in err


@pytest.mark.parametrize(("args", "message"), [(["--threshold", "1.5"], "--threshold must be between 0 and 1"),
                                                (["--device", "tpu"], "unknown device")])
def test_segment_bad_options(capsys, tmp_path, phantom_patient, tiny_checkpoint, args, message):
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", tmp_path / "out",
                           "--weights", tiny_checkpoint, *args)
    assert code == 2 and message in err


def test_segment_subprocess_reports_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "napari_lgg_seg.cli", "segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
         "--weights", str(tmp_path / "whatever.pt")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 2
    assert "napari-lgg-seg segment: error:" in result.stderr and "no LGG patient folders found" in result.stderr
    assert "Traceback" not in result.stderr


# --- demo ------------------------------------------------------------------------------------


def test_demo_headless_without_default_model(capsys, tmp_path, no_default_model, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, stdout, err = run_cli(capsys, "demo", "--out", tmp_path / "demo")
    assert code == 0, err
    assert "no display is available" in stdout
    assert "no default model is installed yet" in stdout
    overview = tmp_path / "demo" / "overview.png"
    assert overview.read_bytes().startswith(PNG_SIGNATURE)
    assert str(overview) in stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["overview.png"]


def test_demo_headless_with_default_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(model, "DEFAULT_MODEL_PATH", make_tiny_checkpoint(tmp_path / "default.pt"))
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--headless", "--out", out)
    assert code == 0, err
    assert "Dice vs the phantom's truth" in stdout
    masks_dir = out / "PHANTOM_00_20000101"
    masks = sorted(masks_dir.glob("*_mask.tif"))
    assert len(masks) == 24
    assert tifffile.imread(masks[0]).shape == (256, 256)
    assert (out / "overview.png").read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((masks_dir / "lgg_seg_export.json").read_text())["tool"] == demo.DEMO_TOOL
    # a second run replaces the first run's output (here with a shorter phantom)
    result = demo.run_headless(out, device="cpu", n_slices=4, overwrite=True)
    assert result["masks"] == masks_dir and 0.0 <= result["dice"] <= 1.0
    assert len(list(masks_dir.glob("*_mask.tif"))) == 4


def test_demo_refuses_to_replace_foreign_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(model, "DEFAULT_MODEL_PATH", make_tiny_checkpoint(tmp_path / "default.pt"))
    foreign = tmp_path / "demo" / "PHANTOM_00_20000101"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "demo", "--headless", "--out", tmp_path / "demo")
    assert code == 2 and "not an earlier demo's output" in err
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_demo_gui_opens_the_sample_and_segments(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    import napari

    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(model, "DEFAULT_MODEL_PATH", make_tiny_checkpoint(tmp_path / "default.pt"))
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: viewer)
    opened, widget = demo.open_demo_viewer()
    assert opened is viewer
    assert "PHANTOM_00_20000101 FLAIR" in [layer.name for layer in viewer.layers]
    # napari's default window cut the layer names in the middle next to the dock (issue 13 bug 5): it fills the
    # screen's free area
    free = viewer.window._qt_window.screen().availableGeometry()
    _left, _top, width, height = viewer.window.geometry()
    assert width >= 0.9 * free.width() and height >= 0.9 * free.height()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    assert "PHANTOM_00_20000101 tumour" in names  # the Segment button was pressed for us
    assert viewer.layers["PHANTOM_00_20000101 tumour"].data.shape == (24, 256, 256)


def test_demo_gui_without_default_model(make_napari_viewer, monkeypatch, tmp_path, capsys, no_default_model):
    import napari

    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: viewer)
    monkeypatch.setattr(napari, "run", lambda: None)
    monkeypatch.setattr(demo, "display_available", lambda: True)
    assert cli.main(["demo"]) == 0
    assert "no default model is installed yet" in capsys.readouterr().out
    assert len(viewer.layers) == 4 and not any(layer.name.endswith("tumour") for layer in viewer.layers)


def test_display_available(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert demo.display_available() is False
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert demo.display_available() is True
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("DISPLAY", ":0")
    assert demo.display_available() is True
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert demo.display_available() is False
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert demo.display_available() is True


def test_overview_slices_prefer_tumour():
    truth = np.zeros((30, 4, 4), np.uint8)
    truth[10:14, 1, 1] = 1
    assert demo._overview_slices(truth, None, 30, 12) == [10, 11, 12, 13]
    pred = np.zeros_like(truth)
    pred[20:30, 2, 2] = 1
    chosen = demo._overview_slices(truth, pred, 30, 6)
    assert len(chosen) == 6 and chosen[0] == 10 and chosen[-1] == 29 and chosen == sorted(chosen)
    assert demo._overview_slices(None, None, 5, 12) == [0, 1, 2, 3, 4]


# --- eda and other commands --------------------------------------------------------------------


def test_eda_is_wired(capsys, tmp_path, phantom_root, monkeypatch):
    calls = []
    fake = types.ModuleType("napari_lgg_seg.eda")
    fake.run_eda = lambda root, out_dir: calls.append((Path(root), Path(out_dir))) or Path(out_dir) / "report.md"
    monkeypatch.setitem(sys.modules, "napari_lgg_seg.eda", fake)
    code, stdout, err = run_cli(capsys, "eda", phantom_root, "--out", tmp_path / "eda")
    assert code == 0, err
    assert calls == [(phantom_root, tmp_path / "eda")]
    assert "report.md" in stdout


def test_eda_missing_root(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eda", tmp_path / "absent", "--out", tmp_path / "eda")
    assert code == 2 and "no such folder" in err


def test_evaluate_bad_split_file(capsys, tmp_path):
    split = tmp_path / "split.json"
    split.write_text("{not json")
    code, _, err = run_cli(capsys, "evaluate", "--data", tmp_path, "--split", split)
    assert code == 2 and "split.json" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["segment"])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([])


# --- issue 12: options, cards and results that cannot be right -------------------------------------------------


@pytest.mark.parametrize(("command", "option", "value"), [
    ("train", "--batch-size", "0"), ("train", "--batch-size", "-1"), ("train", "--steps-per-epoch", "-1"),
    ("train", "--num-threads", "-1"), ("train", "--epochs", "0"), ("train", "--lr", "nan"),
    ("evaluate", "--batch-size", "-1"), ("evaluate", "--batch-size", "0"), ("segment", "--batch-size", "0"),
])
def test_bad_numeric_options_are_usage_errors(capsys, tmp_path, command, option, value):
    base = {"train": ["train", "--data", tmp_path, "--out", tmp_path / "run"],
            "evaluate": ["evaluate", "--data", tmp_path],
            "segment": ["segment", tmp_path, "--out", tmp_path / "out"]}[command]
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in base] + [option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}: must be" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_segment_and_evaluate_feed_the_network_the_same_size(capsys, tmp_path, phantom_root, monkeypatch):
    """The card's image_size (128, the phantoms are 64) decides the network's input for both commands."""
    from napari_lgg_seg import inference

    checkpoint = make_tiny_checkpoint(tmp_path / "c128.pt", image_size=128)
    seen: dict[str, set] = {"segment": set(), "evaluate": set()}
    original = inference.iter_predict_volume
    current = ["segment"]

    def recording(model_, images, **kw):
        seen[current[0]].add(tuple(np.asarray(images).shape[1:3]))
        return original(model_, images, **kw)

    monkeypatch.setattr(inference, "iter_predict_volume", recording)
    patient = sorted(phantom_root.iterdir())[0]
    code, _, _ = run_cli(capsys, "segment", patient, "--out", tmp_path / "masks", "--weights", checkpoint,
                         "--device", "cpu")
    assert code == 0
    current[0] = "evaluate"
    code, _, _ = run_cli(capsys, "evaluate", "--data", phantom_root, "--patients", patient.name, "--weights",
                         checkpoint, "--device", "cpu")
    assert code == 0
    assert seen["segment"] == seen["evaluate"] == {(128, 128)}


@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_nan_weights_are_an_error_naming_the_checkpoint(capsys, tmp_path, phantom_root, command):
    import torch

    net = model.load_model(make_tiny_checkpoint(tmp_path / "ok.pt")).model
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    model.save_checkpoint(tmp_path / "nan.pt", net, config={"image_size": 64})
    args = (["segment", phantom_root, "--out", tmp_path / "masks"] if command == "segment"
            else ["evaluate", "--data", phantom_root])
    code, out, err = run_cli(capsys, *args, "--weights", tmp_path / "nan.pt", "--device", "cpu")
    assert code == 2 and str(tmp_path / "nan.pt") in err and "NaN or infinite" in err
    assert "tumour voxels" not in out and not (tmp_path / "masks").exists()


@pytest.mark.parametrize(("meta", "field"), [({"inference": {"threshold": 1.5}}, "meta.inference.threshold"),
                                             ({"inference": {"threshold": "0.7"}}, "meta.inference.threshold"),
                                             ({"inference": {"min_lesion_voxels": "50"}},
                                              "meta.inference.min_lesion_voxels")])
def test_bad_card_is_refused_by_segment(capsys, tmp_path, phantom_patient, meta, field):
    checkpoint = make_tiny_checkpoint(tmp_path / "card.pt", meta=meta)
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", tmp_path / "out", "--weights", checkpoint)
    assert code == 2 and str(checkpoint) in err and field in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_demo_never_replaces_an_existing_overview_or_masks(capsys, tmp_path, monkeypatch):
    """Issue 12: ``demo --out d`` overwrote the user's d/overview.png. It refuses, naming the file and the way out
    (a new folder or --overwrite), before any work; --overwrite replaces an earlier demo's output."""
    monkeypatch.setattr(model, "DEFAULT_MODEL_PATH", make_tiny_checkpoint(tmp_path / "default.pt"))
    out = tmp_path / "d"
    out.mkdir()
    (out / "overview.png").write_bytes(b"the user's picture")
    code, _, err = run_cli(capsys, "demo", "--headless", "--out", out)
    assert code == 2 and f"{out / 'overview.png'} already exists" in err and "--overwrite" in err
    assert (out / "overview.png").read_bytes() == b"the user's picture"
    assert sorted(p.name for p in out.iterdir()) == ["overview.png"]  # nothing written
    (out / "overview.png").unlink()
    assert run_cli(capsys, "demo", "--headless", "--out", out)[0] == 0
    masks = out / "PHANTOM_00_20000101"
    (out / "overview.png").unlink()  # the masks alone are refused too
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    code, _, err = run_cli(capsys, "demo", "--headless", "--out", out)
    assert code == 2 and f"{masks} already exists" in err
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before
    assert run_cli(capsys, "demo", "--headless", "--out", out, "--overwrite")[0] == 0
    assert (out / "overview.png").read_bytes().startswith(PNG_SIGNATURE)


def test_evaluate_never_replaces_existing_results(capsys, phantom_root, tmp_path):
    """Issue 12: ``evaluate --out`` replaced summary.json and per_patient.csv without a word. It refuses before
    any work, naming the file; --overwrite replaces them."""
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text("mine")
    args = ("evaluate", "--data", phantom_root, "--weights", ckpt, "--device", "cpu", "--conditions", "intact",
            "--patients", "PHANTOM_00_20000101", "--out", out)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and f"{out / 'summary.json'} already exists" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == "mine" and not (out / "per_patient.csv").exists()
    (out / "summary.json").unlink()
    (out / "per_patient.csv").write_text("mine")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and f"{out / 'per_patient.csv'} already exists" in err
    assert (out / "per_patient.csv").read_text() == "mine"
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["summary"]["patients"] == 1


def test_segment_overwrite_never_replaces_the_input_whatever_else_the_folder_holds(capsys, tmp_path, phantom_patient,
                                                                                  tiny_checkpoint):
    """issue 12: a folder or dangling link named like another patient's slice (A_1.tif) made the guard use patient
    'A' while the writer replaced the input patient's folder (images and truth deleted, exit 0). One rule
    (io.folder_patient_id, from the files the reader reads) now decides the id for the guard and the writer."""
    (phantom_patient / "A_1.tif").mkdir()
    (phantom_patient / "A_2.tif").symlink_to(tmp_path / "nowhere.tif")
    before = sorted(p.name for p in phantom_patient.iterdir())
    code, _, err = run_cli(capsys, "segment", phantom_patient, "--out", phantom_patient.parent, "--overwrite",
                           "--weights", tiny_checkpoint, "--device", "cpu")
    assert code != 0 and "input patient folder" in err
    assert sorted(p.name for p in phantom_patient.iterdir()) == before


def test_segment_refuses_ids_that_output_names_cannot_keep(capsys, tmp_path, phantom_patient, tiny_checkpoint):
    """issue 12: spaces / non-ASCII in a patient id were renamed in the outputs (masks no longer pair with their
    images), and a 238-character id failed after inference: both are refused before any work."""
    import tifffile

    for pid in ("TCGA CS 4943", "x" * 238):
        folder = tmp_path / pid[:40]
        folder.mkdir()
        tifffile.imwrite(folder / f"{pid}_1.tif", np.full((16, 16, 3), 50, np.uint8))
        out = tmp_path / f"out_{len(pid)}"
        code, _, err = run_cli(capsys, "segment", folder, "--out", out, "--weights", tiny_checkpoint)
        assert code != 0 and "Nothing was written" in err and not out.exists()
