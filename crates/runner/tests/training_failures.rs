//! Failures during training, through the real binary: a diverging loss, Ctrl-C, an
//! unwritable save location; and runs continued from checkpoints.

mod common;

use common::{command, errors, kerno, stderr, stdout, write_dataset};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 512);
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_diverging_loss_stops_with_its_epoch_and_step_unless_told_otherwise() {
    let data = dataset();
    let base = ["train", "--data", path_str(data.path()), "--lr", "1e30"];
    let out = kerno(&base, &[]);
    let err = errors(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: loss became") && err.contains("at epoch 1, step "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = kerno(
        &[&base[..], &["--epochs", "1", "--no-terminate-on-nan"]].concat(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("test_loss: NaN"), "{}", stdout(&out));
}

#[test]
fn an_unwritable_save_location_fails_before_training_and_keeps_the_old_file() {
    let data = dataset();
    let out_dir = tempfile::tempdir().unwrap();
    let missing = out_dir.path().join("no-such-folder/model.safetensors");
    let out = kerno(
        &[
            "train",
            "--data",
            path_str(data.path()),
            "--save",
            path_str(&missing),
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--save") && err.contains("no-such-folder"),
        "{err}"
    );
    assert!(!stdout(&out).contains("Epoch"), "it trained first");

    // A folder where the checkpoint file should go: refused, and left as it was.
    let folder = out_dir.path().join("ckpt");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"precious").unwrap();
    let out = kerno(
        &[
            "train",
            "--data",
            path_str(data.path()),
            "--checkpoint",
            path_str(&folder),
        ],
        &[],
    );
    assert!(stderr(&out).contains("--checkpoint"), "{}", stderr(&out));
    assert_eq!(std::fs::read(folder.join("keep")).unwrap(), b"precious");
}

/// Under either precision: the checkpoint keeps the run's.
#[test]
fn a_run_continued_from_an_epoch_checkpoint_saves_the_same_bytes() {
    let data = dataset();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.safetensors");
    let ckpt = dir.path().join("run.ckpt");
    let resumed = dir.path().join("resumed.safetensors");
    let data_args = ["--data", path_str(data.path())];
    let train = |extra: &[&str]| {
        let out = kerno(&[&["train"], &data_args[..], extra].concat(), &[]);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        out
    };
    let mut saved = Vec::new();
    for precision in ["f32", "mixed-bf16"] {
        let run = ["--seed", "4", "--precision", precision];
        train(&[&run[..], &["--epochs", "3", "--save", path_str(&full)]].concat());
        train(
            &[
                &run[..],
                &["--epochs", "2", "--checkpoint", path_str(&ckpt)],
            ]
            .concat(),
        );
        let out = train(&[
            "--resume",
            path_str(&ckpt),
            "--epochs",
            "3",
            "--save",
            path_str(&resumed),
        ]);
        assert!(stdout(&out).contains("Epoch 3/3"), "{}", stdout(&out));
        assert!(!stdout(&out).contains("Epoch 2/3"), "{}", stdout(&out));
        let bytes = std::fs::read(&full).unwrap();
        assert_eq!(bytes, std::fs::read(&resumed).unwrap(), "{precision}");
        saved.push(bytes);
    }
    assert_ne!(saved[0], saved[1], "both precisions trained alike");

    for setting in [["--seed", "5"], ["--precision", "f32"]] {
        let out = kerno(
            &[
                &["train", "--resume", path_str(&ckpt)],
                &setting[..],
                &data_args[..],
            ]
            .concat(),
            &[],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(setting[0]), "{}", stderr(&out));
    }
}

/// Sends SIGINT to a real `kerno train` once it has finished an epoch, then checks
/// that it stops with a checkpoint and that the continued run ends exactly where an
/// uninterrupted run of as many epochs does.
#[test]
fn ctrl_c_writes_a_checkpoint_from_which_the_run_continues_exactly() {
    let data = dataset();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("run.ckpt");
    let data_args = ["--data", path_str(data.path())];
    let mut child = command(
        &[
            &[
                "train",
                "--epochs",
                "100000",
                "--checkpoint",
                path_str(&ckpt),
            ],
            &data_args[..],
        ]
        .concat(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map(|l| l.unwrap())
        .any(|l| l.starts_with("Epoch 3/"));
    assert!(started, "kerno ended before its third epoch");
    let signal = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    lines.for_each(drop);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let message = err.lines().last().unwrap();
    assert!(
        message.contains("checkpoint written to") && message.contains("kerno train --resume"),
        "{err}"
    );
    // "interrupted in epoch E/100000 after step S; ..."
    let epoch: usize = message
        .split("interrupted in epoch ")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {message}"));

    let resumed = dir.path().join("resumed.safetensors");
    let uninterrupted = dir.path().join("uninterrupted.safetensors");
    let epochs = epoch.to_string();
    let run = |extra: &[&str]| {
        let out = kerno(
            &[&["train", "--epochs", &epochs], &data_args[..], extra].concat(),
            &[],
        );
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
    };
    run(&["--resume", path_str(&ckpt), "--save", path_str(&resumed)]);
    run(&["--save", path_str(&uninterrupted)]);
    assert_eq!(
        std::fs::read(&resumed).unwrap(),
        std::fs::read(&uninterrupted).unwrap(),
        "stopped in epoch {epoch}"
    );
}

/// Model files whose architecture claims more than they hold (the fuzz
/// regressions: layers of 160 GB, sizes whose product or sum overflows, 400 MB
/// of layers behind a file of 700 bytes): every command that reads a model
/// refuses each with one line naming the file.
#[test]
fn model_files_that_claim_more_than_they_hold_are_one_line_errors() {
    let data = dataset();
    let regressions =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/model_file");
    let mut files: Vec<_> = std::fs::read_dir(&regressions)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "the regressions are in {}",
        regressions.display()
    );
    for file in &files {
        let file = path_str(file);
        let data = path_str(data.path());
        let commands: [&[&str]; 5] = [
            &["evaluate", "--model", file, "--data", data],
            &["predict", "--model", file, "--data", data],
            &["summary", "--model", file],
            &[
                "train",
                "--init-weights",
                file,
                "--data",
                data,
                "--epochs",
                "1",
            ],
            &["train", "--resume", file, "--data", data],
        ];
        for args in commands {
            let out = kerno(args, &[]);
            let err = errors(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.starts_with("error: ") && err.contains(file),
                "{args:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
    }
}
