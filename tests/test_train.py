"""Step 4, train.py: splits, frozen vs fine-tuned training, honest selection, resume, config.

Runs on tiny random-init extractors and a small synthetic step-3 cache written in the exact
shape of docs/FORMATS.md (sessions 1, 2 and 5; 3 dialogs each, one of them scripted).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import evaluate
import train
import utils
from common import cli, fileio, formats, modelhub
from common.formats import LABELS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from demo.build_ser_models import build

    return build(tmp_path_factory.mktemp("ser_models_train"), seed=0)


def write_work(work, poison_test=False, seed=0):
    """labels.json + WORK/simulated/aligned-p1.5/cache/<dialog>.pt; poison_test scrambles the
    test session's labels and text (what a leak of the test set into selection would notice)."""
    g = torch.Generator().manual_seed(seed)
    dialogs = {}
    cache_dir = work / "simulated" / "aligned-p1.5" / "cache"
    for ses in (1, 2, 5):
        for name, kind, script in (
            (f"Ses0{ses}F_impro01", "impro", None),
            (f"Ses0{ses}M_impro02", "impro", None),
            (f"Ses0{ses}F_script0{ses % 3 + 1}_1", "script", f"script0{ses % 3 + 1}"),
        ):
            dialogs[name] = {"session": ses, "kind": kind, "script": script, "utterances": []}
            segs = []
            for i in range(6):
                label = -1 if i == 5 else (i + ses) % len(LABELS)
                if poison_test and ses == 5:
                    label, text = (label + 1) % len(LABELS) if label >= 0 else -1, "poison " * (i + 1)
                else:
                    text = ["i am so happy", "leave me alone now", "i miss her", "okay fine", "what", "hmm"][i]
                n = int(4000 + 8000 * torch.rand(1, generator=g))
                segs.append(
                    {
                        "id": f"{name}-{i:04d}",
                        "start": float(i),
                        "end": i + n / 16000,
                        "speaker": f"SPEAKER_0{i % 2}",
                        "text": text,
                        "label": label,
                        "audio": torch.randn(n, generator=g) * (0.1 + 0.2 * max(label, 0)),
                    }
                )
            fileio.atomic_torch_save(
                {"dialog": name, "session": ses, "sample_rate": 16000, "segments": segs}, cache_dir / f"{name}.pt"
            )
    fileio.atomic_write_json(work / "labels.json", {"corpus": "synthetic", "labels": list(LABELS), "dialogs": dialogs})
    return work


def args_for(work, models, run, *extra):
    return [
        "--work",
        str(work),
        "--pipe",
        "simulated",
        "--run",
        run,
        "--text-model",
        models["text_model"],
        "--audio-model",
        models["audio_model"],
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--val-fraction",
        "0.34",
        *extra,
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return write_work(tmp_path_factory.mktemp("work_train"))


def read_log(run_dir):
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "samples_per_s", "audio_s_per_s")}
        for line in open(run_dir / "log.jsonl")
    ]


def extractor_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("text.", "audio."))}


def test_finetune_run_config_optimizer_and_changed_extractors(work, tiny_models, monkeypatch):
    built = []
    real_build = utils.build_model
    monkeypatch.setattr(utils, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    run_dir = train.main(args_for(work, tiny_models, "ft"))
    model = built[0]
    fresh = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"])
    before, after = extractor_state(fresh), extractor_state(model)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("text.") for k in changed) and any(k.startswith("audio.") for k in changed)

    config = json.load(open(f"{run_dir}/config.json"))
    split = config["split"]
    assert split["test"] == ["Ses05F_impro01", "Ses05F_script03_1", "Ses05M_impro02"]
    assert not set(split["train"]) & set(split["val"]) and not (set(split["train"]) | set(split["val"])) & set(
        split["test"]
    )
    assert {formats.session_of(d) for d in split["val"]} == {1, 2}  # one held-out dialog per training session
    assert len(split["train"]) == 4 and len(split["val"]) == 2
    for key in (
        "lr_extractor",
        "lr_head",
        "weight_decay",
        "epochs",
        "batch_size",
        "seed",
        "mode",
        "model",
        "pipe",
        "variant",
        "code_version",
        "extractors",
        "schedule_on",
        "select_on",
        "validation",
        "bf16",
    ):
        assert key in config, key
    assert config["extractors"]["audio"]["name"] == tiny_models["audio_model"]
    assert len(config["extractors"]["text"]["weights_sha256"]) == 64
    assert (config["mode"], config["bf16"], config["pipe"], config["variant"]) == (
        "finetune",
        False,
        "simulated",
        "aligned-p1.5",
    )
    # the authors' protocol is the default: no crop, schedule on loss, selection on accuracy, their head
    head = config["model"]
    assert (
        head["max_audio_seconds"],
        config["schedule_on"],
        config["select_on"],
        head["fusion"],
        head["max_text_tokens"],
        head["audio_padding"],
        config["validation"],
    ) == (0.0, "loss", "acc", "gated-xattn", 512, "exact", "held-out")
    assert config["model"] == utils.ModelConfig.from_run_config(config).to_dict()

    last = fileio.load_pt(f"{run_dir}/checkpoint_last.pt")
    groups = last["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [2e-5, 1e-4] and all(g["weight_decay"] == 0.01 for g in groups)
    assert len(groups[0]["params"]) == len(model.extractor_parameters())
    assert len(groups[1]["params"]) == len(model.head_parameters())
    log = read_log(Path(run_dir))
    assert [r["epoch"] for r in log] == [1, 2] and all(0 <= r["val_acc"] <= 1 for r in log)

    # predictions for every test segment, labelled or not, with probabilities
    pred = evaluate.predict_split(run_dir, "test", device="cpu")
    assert len(pred["segments"]) == 18 and sum(s["label"] is None for s in pred["segments"]) == 3
    s = pred["segments"][0]
    assert set(s) == {"id", "dialog", "start", "end", "speaker", "text", "label", "pred", "probs"}
    assert abs(sum(s["probs"].values()) - 1) < 1e-5 and s["pred"] == max(s["probs"], key=s["probs"].get)


def test_frozen_mode_caches_embeddings_and_never_touches_extractors(work, tiny_models, monkeypatch):
    calls = {"n": 0}
    for cls in (utils.TextEmbedder, utils.AudioEmbedder):
        real = cls.forward
        monkeypatch.setattr(
            cls, "forward", lambda self, *a, _real=real: calls.__setitem__("n", calls["n"] + 1) or _real(self, *a)
        )
    in_epochs = []
    real_epoch = train.train_one_epoch

    def counting_epoch(*a, **k):
        n0 = calls["n"]
        out = real_epoch(*a, **k)
        in_epochs.append(calls["n"] - n0)
        return out

    monkeypatch.setattr(train, "train_one_epoch", counting_epoch)
    built = []
    real_build = utils.build_model
    monkeypatch.setattr(utils, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])

    run_dir = train.main(args_for(work, tiny_models, "frozen", "--mode", "frozen"))
    first_calls = calls["n"]
    assert first_calls > 0 and in_epochs == [0, 0]  # embeddings once, before the epochs
    fresh = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"])
    before, after = extractor_state(fresh), extractor_state(built[0])
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    best = fileio.load_pt(f"{run_dir}/checkpoint_best.pt")
    assert best["model"] and not any(k.startswith(("text.", "audio.")) for k in best["model"])
    config = json.load(open(f"{run_dir}/config.json"))
    assert set(config["feature_dirs"]) == {"text", "audio"}
    assert "/features/" in config["feature_dirs"]["audio"] and config["feature_dirs"]["audio"].endswith(
        "simulated/aligned-p1.5"
    )

    # a second run on the same data: every embedding is a cache hit, no extractor forward at all
    calls["n"] = 0
    train.main(args_for(work, tiny_models, "frozen2", "--mode", "frozen", "--epochs", "1"))
    assert calls["n"] == 0
    # the text-only baseline shares the text feature cache
    train.main(args_for(work, tiny_models, "frozen-text", "--mode", "frozen", "--modality", "text", "--epochs", "1"))
    assert calls["n"] == 0
    pred = evaluate.predict_split(run_dir, "test", device="cpu")
    assert len(pred["segments"]) == 18


def test_selection_never_depends_on_the_test_split(tmp_path, tiny_models):
    runs = []
    for poison in (False, True):
        w = write_work(tmp_path / f"w{int(poison)}", poison_test=poison)
        runs.append(Path(train.main(args_for(w, tiny_models, "r", "--epochs", "3"))))
    assert read_log(runs[0]) == read_log(runs[1])
    b0, b1 = (fileio.load_pt(r / "checkpoint_best.pt") for r in runs)
    assert b0["epoch"] == b1["epoch"] and all(torch.equal(b0["model"][k], b1["model"][k]) for k in b0["model"])


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, tiny_models, monkeypatch):
    w = write_work(tmp_path / "w")
    full = Path(train.main(args_for(w, tiny_models, "full", "--epochs", "3")))
    real_epoch = train.train_one_epoch
    n = {"calls": 0}

    def interrupted(*a, **k):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt("simulated interruption in epoch 2")
        return real_epoch(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(args_for(w, tiny_models, "cut", "--epochs", "3"))
    cut = w / "runs" / "cut"
    assert [r["epoch"] for r in read_log(cut)] == [1]
    epochs_run = []
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: epochs_run.append(1) or real_epoch(*a, **k))
    train.main(args_for(w, tiny_models, "cut", "--epochs", "3"))
    assert len(epochs_run) == 2  # resumed after epoch 1, did not start over
    assert read_log(cut) == read_log(full)
    a, b = fileio.load_pt(full / "checkpoint_best.pt"), fileio.load_pt(cut / "checkpoint_best.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a changed configuration refuses to resume silently
    with pytest.raises(cli.PipelineError, match="lr_head"):
        train.main(args_for(w, tiny_models, "cut", "--epochs", "3", "--lr-head", "1e-3"))


def test_folds_are_speaker_and_script_disjoint():
    meta = {}
    for ses in range(1, 6):
        for g in "FM":
            meta[f"Ses0{ses}{g}_impro01"] = {"session": ses, "kind": "impro", "script": None}
            for s in (1, 2, 3):
                meta[f"Ses0{ses}{g}_script0{s}_1"] = {"session": ses, "kind": "script", "script": f"script0{s}"}
    loso = train.make_folds(meta, "loso", 5, 0.15, 0)
    assert [f["test_session"] for f in loso] == [1, 2, 3, 4, 5]
    for f in loso:
        assert {formats.session_of(d) for d in f["test"]} == {f["test_session"]} and not f["unused"]
        assert f["test_session"] not in {formats.session_of(d) for d in f["train"] + f["val"]}
        assert len(f["train"] + f["val"] + f["test"]) == len(meta)
    for f in train.make_folds(meta, "speaker-script", 5, 0.15, 0):
        test_scripts = {meta[d]["script"] for d in f["test"]} - {None}
        train_scripts = {meta[d]["script"] for d in f["train"] + f["val"]} - {None}
        assert test_scripts == {f["held_script"]} and not test_scripts & train_scripts
        assert f["test_session"] not in {formats.session_of(d) for d in f["train"] + f["val"]}
        assert len(f["test"]) == 4 and len(f["train"] + f["val"]) == 4 * 2 * 3  # impro + 2 other scripts x 4 sessions
    single = train.make_folds(meta, "session", 5, 0.15, 0)
    assert len(single) == 1 and {formats.session_of(d) for d in single[0]["test"]} == {5}


def scripted_validation(monkeypatch, losses, accs):
    """Replace train.validate by a script: epoch k returns losses[k-1], accs[k-1]."""
    calls = iter(zip(losses, accs))
    monkeypatch.setattr(train, "validate", lambda *a, **k: dict(zip(("loss", "acc"), next(calls))))


@pytest.mark.parametrize(
    "flags, lr_drop_epoch, best_epoch, epochs_run",
    [
        ((), 4, 6, 8),  # authors: LR follows the loss (worse from epoch 2), keep the best accuracy
        (("--schedule-on", "acc"), None, 6, 8),  # accuracy keeps improving: the LR never drops
        (("--select-on", "loss"), 4, 1, 6),  # best loss at epoch 1; early stopping after 5 epochs without improvement
    ],
)
def test_schedule_follows_loss_and_selection_follows_accuracy(
    work, tiny_models, monkeypatch, flags, lr_drop_epoch, best_epoch, epochs_run
):
    losses = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    accs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6]
    scripted_validation(monkeypatch, losses, accs)
    name = "sched-" + "-".join(flags).replace("--", "")
    run_dir = Path(train.main(args_for(work, tiny_models, name, "--mode", "frozen", "--epochs", "8", *flags)))
    log = read_log(run_dir)
    assert len(log) == epochs_run  # 8 epochs unless early-stopped
    head_lrs = [r["lr"][0] for r in log]
    dropped = [r["epoch"] for r, lr in zip(log, head_lrs) if lr < 1e-4]
    assert (dropped[0] if dropped else None) == lr_drop_epoch
    assert fileio.load_pt(run_dir / "checkpoint_best.pt")["epoch"] == best_epoch


def test_validation_on_test_reproduces_the_authors_selection(work, tiny_models):
    run_dir = Path(
        train.main(
            args_for(work, tiny_models, "val-on-test", "--mode", "frozen", "--epochs", "1", "--validation", "test")
        )
    )
    split = json.load(open(run_dir / "config.json"))["split"]
    assert split["val"] == split["test"] == ["Ses05F_impro01", "Ses05F_script03_1", "Ses05M_impro02"]
    assert len(split["train"]) == 6  # every training-session dialog trains


def test_bad_training_arguments_are_named(work, tiny_models):
    with pytest.raises(cli.PipelineError, match="--epochs 0"):
        train.main(args_for(work, tiny_models, "bad", "--epochs", "0"))
    with pytest.raises(cli.PipelineError, match="audio-padding"):
        train.main(args_for(work, tiny_models, "bad", "--mode", "frozen", "--audio-padding", "authors"))


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_several_seeds_share_the_split_and_equal_single_seed_runs(work, tiny_models, mode):
    """--seed 0 1 trains one run per seed from data read once; each equals the run of that seed alone,
    and seeds change initialisation and data order only (the validation split stays)."""
    dirs = train.main(
        args_for(work, tiny_models, f"ms-{mode}-s{{seed}}", "--mode", mode, "--epochs", "2", "--seed", "3", "4")
    )
    assert [Path(d).name for d in dirs] == [f"ms-{mode}-s3", f"ms-{mode}-s4"]
    alone = Path(
        train.main(args_for(work, tiny_models, f"alone-{mode}", "--mode", mode, "--epochs", "2", "--seed", "4"))
    )
    configs = [json.load(open(Path(d) / "config.json")) for d in (*dirs, alone)]
    assert configs[0]["split"] == configs[1]["split"] == configs[2]["split"]
    assert [c["seed"] for c in configs] == [3, 4, 4]
    a, b = fileio.load_pt(Path(dirs[1]) / "checkpoint_best.pt"), fileio.load_pt(alone / "checkpoint_best.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    c = fileio.load_pt(Path(dirs[0]) / "checkpoint_best.pt")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    with pytest.raises(cli.PipelineError, match="seed"):
        train.main(args_for(work, tiny_models, "no-template", "--seed", "1", "2"))


def test_sweep_trains_every_combination_each_equal_to_its_run_alone(tmp_path, tiny_models):
    """--variant/--modality/--fusion/--seed with several values: one run per combination (fusion
    variants only for the fused model), named by the template, each equal to the same run trained alone."""
    import shutil

    w = write_work(tmp_path / "w")
    shutil.copytree(w / "simulated" / "aligned-p1.5", w / "simulated" / "aligned-p1")
    dirs = train.main(
        args_for(
            w,
            tiny_models,
            "sw-{variant}-{modality}-{fusion}-s{seed}",
            "--epochs",
            "1",
            "--variant",
            "aligned-p1.5",
            "aligned-p1",
            "--modality",
            "fusion",
            "text",
            "--fusion",
            "gated-xattn",
            "concat",
            "--seed",
            "1",
        )
    )  # several seeds: the test above
    expected = [
        f"sw-{v}-{m}-{f}-s1"
        for v in ("aligned-p1.5", "aligned-p1")
        for m, f in (("fusion", "gated-xattn"), ("fusion", "concat"), ("text", "gated-xattn"))
    ]
    assert [Path(d).name for d in dirs] == expected
    for d in dirs:
        c = json.load(open(Path(d) / "config.json"))
        assert f"sw-{c['variant']}-{c['model']['modality']}-{c['model']['fusion']}-s{c['seed']}" == Path(d).name
    alone = Path(
        train.main(
            args_for(
                w, tiny_models, "alone", "--epochs", "1", "--variant", "aligned-p1", "--fusion", "concat", "--seed", "1"
            )
        )
    )
    a, b = (
        fileio.load_pt(w / "runs" / "sw-aligned-p1-fusion-concat-s1" / "checkpoint_best.pt"),
        fileio.load_pt(alone / "checkpoint_best.pt"),
    )
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # one name per run, in sweep order; a wrong count or colliding names are named errors
    named = train.main(
        args_for(w, tiny_models, "x", "--epochs", "1", "--modality", "text", "audio", "--run", "n1", "n2")
    )
    assert [json.load(open(Path(d) / "config.json"))["model"]["modality"] for d in named] == ["text", "audio"]
    with pytest.raises(cli.PipelineError, match="3 names for 2 runs"):
        train.main(args_for(w, tiny_models, "x", "--modality", "text", "audio", "--run", "a", "b", "c"))
    with pytest.raises(cli.PipelineError, match="share names"):
        train.main(args_for(w, tiny_models, "same-{seed}", "--variant", "aligned-p1.5", "aligned-p1"))


def test_a_kill_between_log_and_checkpoint_leaves_each_epoch_logged_once(tmp_path, tiny_models, monkeypatch):
    w = write_work(tmp_path / "w")
    full = Path(train.main(args_for(w, tiny_models, "full", "--epochs", "3")))
    real_save, saves = fileio.atomic_torch_save, []

    def killed_at_second_last_checkpoint(obj, path):
        if Path(path).name == "checkpoint_last.pt":
            saves.append(path)
            if len(saves) == 2:  # epoch 2 is logged, its checkpoint is not written
                Path(path).with_name(".checkpoint_last.pt.x1y2.tmp").write_bytes(b"partial")
                raise KeyboardInterrupt("killed while saving epoch 2")
        return real_save(obj, path)

    monkeypatch.setattr(fileio, "atomic_torch_save", killed_at_second_last_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train.main(args_for(w, tiny_models, "cut", "--epochs", "3"))
    cut = w / "runs" / "cut"
    assert [r["epoch"] for r in read_log(cut)] == [1, 2] and list(cut.glob(".*.tmp"))
    monkeypatch.setattr(fileio, "atomic_torch_save", real_save)
    train.main(args_for(w, tiny_models, "cut", "--epochs", "3"))
    assert read_log(cut) == read_log(full)  # epoch 2 once, as trained after the resume
    assert not list(cut.glob(".*.tmp"))
    a, b = fileio.load_pt(full / "checkpoint_best.pt"), fileio.load_pt(cut / "checkpoint_best.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_kill_9_and_rerun_with_loader_workers_equals_an_uninterrupted_run(tmp_path, tiny_models):
    """train.py in a process of its own with --num-workers 2 (persistent workers), killed with SIGKILL
    once its first epoch is logged, then run again with the same command: the same log and weights as
    a run that was never interrupted. The process is a fork of this one (train.main, the code that
    `python train.py` runs, without a second interpreter start); SIGKILL leaves it no last word."""
    import multiprocessing
    import os
    import signal
    import time

    w = write_work(tmp_path / "w")

    def argv(run):
        a = args_for(w, tiny_models, run, "--epochs", "3")
        a[a.index("--num-workers") + 1] = "2"
        return a

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every run on one thread: a fork must not enter its parent's OpenMP pool (it hangs)
    try:
        train.main(argv("full"))
        proc = multiprocessing.get_context("fork").Process(target=train.main, args=(argv("cut"),))
        proc.start()
        log = w / "runs" / "cut" / "log.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and proc.is_alive() and not (log.is_file() and log.read_text().count("\n") >= 1):
            time.sleep(0.01)
        assert proc.is_alive(), "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL and len(read_log(w / "runs" / "cut")) in (1, 2)  # killed after epoch 1
        train.main(argv("cut"))  # the same command again
    finally:
        torch.set_num_threads(threads)
    full, cut = w / "runs" / "full", w / "runs" / "cut"
    assert read_log(cut) == read_log(full)
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        a, b = fileio.load_pt(full / name), fileio.load_pt(cut / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_folds_of_a_corpus_with_any_dialog_names_use_labels_sessions():
    """A corpus from corpus_from_csv.py may name dialogs anything: splits follow labels.json's sessions."""
    meta = {f"call-{s}-{i}": {"session": s, "kind": "impro", "script": None} for s in (1, 2, 3) for i in range(4)}
    (fold,) = train.make_folds(meta, "session", 3, 0.25, 0)
    assert fold["test"] == [f"call-3-{i}" for i in range(4)]
    assert sorted(fold["train"] + fold["val"]) == sorted(d for d in meta if meta[d]["session"] != 3)
    assert [meta[d]["session"] for d in fold["val"]].count(1) == 1 and [meta[d]["session"] for d in fold["val"]].count(
        2
    ) == 1


@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_modality_sweep_arms_equal_their_runs_alone(tmp_path, tiny_models, mode):
    """A --modality sweep prepares each arm's data as that arm alone would: with an audio extractor
    whose config says do_normalize false, the text arm (first) must not hand its normalised audio to
    the audio and fusion arms. Each arm's config.json (do_normalize, feature caches) and trained
    weights equal those of the arm run alone in a fresh work dir."""
    import shutil

    audio_dir = tmp_path / "audio-raw"
    shutil.copytree(tiny_models["audio_model"], audio_dir)
    pre = json.loads((audio_dir / "preprocessor_config.json").read_text())
    (audio_dir / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    models = {**tiny_models, "audio_model": str(audio_dir)}
    arms = ("text", "audio", "fusion")
    swept = train.main(
        args_for(
            write_work(tmp_path / "sweep"),
            models,
            "sw-{modality}",
            "--mode",
            mode,
            "--epochs",
            "1",
            "--modality",
            *arms,
        )
    )
    skip = ("run", "work", "code_version", "feature_dirs", "data")
    for arm, d in zip(arms, swept):
        w = write_work(tmp_path / f"alone-{arm}")
        alone = Path(train.main(args_for(w, models, f"sw-{arm}", "--mode", mode, "--epochs", "1", "--modality", arm)))
        c_sweep, c_alone = (json.load(open(Path(p) / "config.json")) for p in (d, alone))
        assert {k: v for k, v in c_sweep.items() if k not in skip} == {
            k: v for k, v in c_alone.items() if k not in skip
        }, arm
        assert {k: v for k, v in c_sweep["data"].items() if k != "work"} == {
            k: v for k, v in c_alone["data"].items() if k != "work"
        }, arm  # the same data, in another folder
        assert c_sweep["do_normalize"] is (arm == "text"), arm  # the audio arms follow their extractor's config
        keys = {k: Path(v).relative_to(tmp_path / "sweep").parts for k, v in c_sweep["feature_dirs"].items()}
        assert keys == {k: Path(v).relative_to(w).parts for k, v in c_alone["feature_dirs"].items()}, arm
        a, b = fileio.load_pt(Path(d) / "checkpoint_best.pt"), fileio.load_pt(alone / "checkpoint_best.pt")
        assert a["model"].keys() == b["model"].keys(), arm
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), arm
    if mode == "frozen":  # a feature cache's key changes with what changes its content
        dirs = {arm: json.load(open(Path(d) / "config.json"))["feature_dirs"] for arm, d in zip(arms, swept)}
        assert dirs["audio"]["audio"] == dirs["fusion"]["audio"] and dirs["text"]["text"] == dirs["fusion"]["text"]
        ident = modelhub.extractor_identity(str(audio_dir))
        assert utils.feature_key(
            "audio", ident, {"max_audio_seconds": 0, "do_normalize": False, "bf16": False}
        ) != utils.feature_key("audio", ident, {"max_audio_seconds": 0, "do_normalize": True, "bf16": False})


def test_a_corrupt_feature_cache_is_a_named_error_and_an_unfinished_one_is_recomputed(tmp_path, tiny_models, capsys):
    """Frozen mode's feature caches carry a checksum: flipped bytes are a one-line error naming the
    file and step 4; a cache without its checksum file (a killed write) is computed anew."""
    w = write_work(tmp_path / "w")
    run = Path(train.main(args_for(w, tiny_models, "fz", "--mode", "frozen", "--epochs", "1", "--modality", "audio")))
    files = sorted(Path(json.load(open(run / "config.json"))["feature_dirs"]["audio"]).glob("*.pt"))
    assert files and all(fileio.checksum_path(f).is_file() for f in files)
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x10
    files[0].write_bytes(bytes(data))
    with pytest.raises(cli.PipelineError) as e:
        train.main(args_for(w, tiny_models, "fz2", "--mode", "frozen", "--epochs", "1", "--modality", "audio"))
    assert str(e.value).startswith(f"{files[0]}: corrupt feature cache") and "step 4" in str(e.value), str(e.value)
    fileio.checksum_path(files[0]).unlink()
    capsys.readouterr()
    again = Path(
        train.main(args_for(w, tiny_models, "fz2", "--mode", "frozen", "--epochs", "1", "--modality", "audio"))
    )
    import re

    computed = [int(n) for n in re.findall(r"(\d+) computed", capsys.readouterr().out)]
    assert sum(computed) > 0 and fileio.checksum_path(files[0]).is_file(), computed
    a, b = fileio.load_pt(run / "checkpoint_best.pt"), fileio.load_pt(again / "checkpoint_best.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the same features again


def test_model_config_round_trips_a_run_config_and_gives_the_flag_defaults(work, tiny_models):
    """config.json holds the model's settings as its "model" section: utils.ModelConfig.from_run_config reads
    them back (an unknown key is an error), and the model built from either is the same; runs written before
    the section existed (flat keys) still load; train.py's flags default to ModelConfig's values."""
    defaults = vars(train.parse_args([]))
    for f in dataclasses.fields(utils.ModelConfig):
        value = defaults[f.name] if f.name not in ("modality", "fusion") else defaults[f.name][0]
        assert value == f.default, f.name
    assert (utils.ModelConfig.ffn_dim, utils.ModelConfig.dropout, utils.ModelConfig.heads) == (2048, 0.2, 8)

    run_dir = Path(
        train.main(
            args_for(
                work,
                tiny_models,
                "mc",
                "--mode",
                "frozen",
                "--epochs",
                "1",
                "--modality",
                "text",
                "--dropout",
                "0.1",
                "--heads",
                "2",
                "--fusion-layers",
                "1",
                "--ffn-dim",
                "24",
                "--max-text-tokens",
                "16",
            )
        )
    )
    config = json.loads((run_dir / "config.json").read_text())
    mc = utils.ModelConfig.from_run_config(config)
    assert (mc.modality, mc.dropout, mc.heads, mc.fusion_layers, mc.ffn_dim, mc.max_text_tokens) == (
        "text",
        0.1,
        2,
        1,
        24,
        16,
    )
    assert config["model"] == mc.to_dict() and not set(mc.to_dict()) & set(config)  # said once, in "model"
    from_config, from_mc = (
        utils.build_model(config, load_extractors=False),
        utils.build_model(mc, load_extractors=False),
    )
    assert [(k, v.shape) for k, v in from_config.state_dict().items()] == [
        (k, v.shape) for k, v in from_mc.state_dict().items()
    ]
    layers = from_mc.head.encoder.layers
    assert len(layers) == 1 and layers[0].linear1.out_features == 24 and layers[0].self_attn.num_heads == 2
    trained = fileio.load_pt(run_dir / "checkpoint_best.pt")["model"]
    assert from_mc.load_state_dict(trained, strict=False).unexpected_keys == []

    with pytest.raises(cli.PipelineError, match=r"unknown model setting\(s\) \['hidden'\]"):
        utils.ModelConfig.from_dict({"ffn_dim": 24, "hidden": 32}, "model section")
    with pytest.raises(cli.PipelineError, match=r"run\.json: unknown model setting\(s\) \['hidden'\]"):
        utils.ModelConfig.from_run_config({**config, "model": {**config["model"], "hidden": 32}}, "run.json")
    flat = {**{k: v for k, v in config.items() if k != "model"}, **config["model"]}  # a run from before "model"
    assert utils.ModelConfig.from_run_config(flat) == mc
    with pytest.raises(cli.PipelineError, match=r"run\.json: no \['modality'\]"):
        utils.ModelConfig.from_run_config({k: v for k, v in flat.items() if k != "modality"}, "run.json")
    old = {k: v for k, v in flat.items() if k not in ("fusion", "fusion_layers", "ffn_dim", "audio_padding")}
    assert utils.ModelConfig.from_run_config(old).ffn_dim == 2048  # a run config from before those flags


def test_speaker_disjoint_folds_with_named_speakers():
    """Named speakers are corpus-wide: loso and speaker-script leave out of training every dialog in which a test
    speaker speaks; session (the paper's split) does not. IEMOCAP's F/M are per-session actors."""
    speakers = {  # dialog: (session, speakers); Dana speaks in sessions 1 and 2, Eli only in session 3
        "a1": (1, ["Ana", "Ben", "Dana"]),
        "b1": (1, ["Ana", "Cy"]),
        "a2": (2, ["Dana", "Fay", "Gil"]),
        "b2": (2, ["Fay", "Gil"]),
        "a3": (3, ["Eli", "Hal", "Ivo"]),
    }
    meta = {
        d: train.fold_meta(d, {"session": s, "utterances": [{"speaker": n} for n in names]})
        for d, (s, names) in speakers.items()
    }
    loso = {f["test_session"]: f for f in train.make_folds(meta, "loso", 1, 0.0, 0)}
    assert loso[1]["unused"] == ["a2"] and loso[1]["unused_for_test_speakers"] == ["a2"]
    assert sorted(loso[1]["train"]) == ["a3", "b2"]
    assert loso[2]["unused"] == ["a1"] and sorted(loso[2]["train"]) == ["a3", "b1"]
    assert loso[3]["unused"] == [] and "unused_for_test_speakers" not in loso[3]
    (single,) = train.make_folds(meta, "session", 1, 0.0, 0)
    assert single["unused"] == [] and sorted(single["train"]) == ["a2", "a3", "b2"]
    # IEMOCAP: F and M of session 1 are not those of session 2, so nothing is left out
    iemocap = {
        f"Ses0{k}F_impro01": train.fold_meta(
            f"Ses0{k}F_impro01", {"session": k, "utterances": [{"speaker": "F"}, {"speaker": "M"}]}
        )
        for k in (1, 2)
    }
    assert iemocap["Ses01F_impro01"]["speakers"] == ["Session 1 F", "Session 1 M"]
    assert all(not f["unused"] for f in train.make_folds(iemocap, "loso", 1, 0.0, 0))
    # a speaker in every session leaves no training dialog: a named error
    everywhere = {d: dict(m, speakers=m["speakers"] + ["Zed"]) for d, m in meta.items()}
    with pytest.raises(cli.PipelineError, match=r"left out of training because a test speaker speaks in them"):
        train.make_folds(everywhere, "loso", 1, 0.0, 0)
