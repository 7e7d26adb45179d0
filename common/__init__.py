"""The plumbing the step scripts share, one module per concern; nothing here imports a step script or
the model (utils.py).

  cli         the error path: one-line errors, exit statuses, run_main, start_step (a step as a process)
  huberrors   what a Hugging Face hub error means, in one line; HF_TOKEN and offline mode
  fileio      atomic writes, JSON, .pt files with checksums, temporary files, a file lock
  formats     the label set and every format that crosses between steps (docs/FORMATS.md order)
  intervals   interval unions, overlaps and coverage
  scoring     confusion matrices, metrics, the dialog bootstrap, the paired test, the paper's numbers
  rundirs     run directories: folds, test dialogs, the data a run was trained on, code version, seeds
  checklist   preflight (--check) items, CUDA, disk and time estimates
  modelhub    models by hub name or local folder, offline copies, an extractor's identity
  defaults    the defaults the steps share (work dir, corpus, pipe, models), each said once
  step2_*     step 2's backends: oracle, simulated (the demo's error simulator), whisperx (WhisperX + pyannote)
"""
