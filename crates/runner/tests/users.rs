//! What a Keras user reaches for after the notebook: predicting their own
//! pictures, training logs and plots, JSON output, and datasets that say what they are.

mod common;

use common::{kerno, stderr, stdout, write_dataset};
use image::{GrayImage, Luma};
use std::path::{Path, PathBuf};

/// A model of 784 inputs trained a little on a generated dataset, in `dir`.
fn trained_model(dir: &Path) -> PathBuf {
    write_dataset(dir, 256);
    let model = dir.join("model.safetensors");
    let out = kerno(
        &[
            "train",
            "--data",
            dir.to_str().unwrap(),
            "--epochs",
            "1",
            "--save",
            model.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    model
}

/// A dark 7-like stroke on light paper, as a phone would photograph it.
fn drawn_digit(path: &Path) {
    let mut page = GrayImage::from_pixel(240, 300, Luma([235]));
    for x in 60..190 {
        for y in 60..74 {
            page.put_pixel(x, y, Luma([30]));
        }
    }
    for i in 0..170 {
        for w in 0..14 {
            page.put_pixel(180 - i / 2 + w - 7, 70 + i, Luma([30]));
        }
    }
    page.save(path).unwrap();
}

/// CRC-32 (PNG's), for hand-made chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `width`×`height` grey pixels, with no image data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 0, 0, 0, 0]);
    chunk(b"IHDR", &header);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn predict_reads_a_persons_picture_and_explains_bad_ones_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained_model(dir.path());
    let model = model.to_str().unwrap();
    let seven = dir.path().join("seven.png");
    drawn_digit(&seven);
    let jpeg = dir.path().join("seven.jpg");
    image::open(&seven).unwrap().to_rgb8().save(&jpeg).unwrap();
    let seen = dir.path().join("seen");

    let out = kerno(
        &[
            "predict",
            "--model",
            model,
            "--image",
            seven.to_str().unwrap(),
            jpeg.to_str().unwrap(),
            "--top",
            "3",
            "--save-preprocessed",
            seen.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, path) in lines.iter().zip([&seven, &jpeg]) {
        let rest = line.strip_prefix(&format!("{}: ", path.display())).unwrap();
        assert_eq!(rest.matches("(p=").count(), 3, "three classes: {line}");
    }
    for name in ["seven.png", "seven-2.png"] {
        let saw = image::open(seen.join(name)).unwrap();
        assert_eq!((saw.width(), saw.height()), (28, 28));
        // Light ink on black, as MNIST: the corners are paper.
        assert_eq!(saw.to_luma8().get_pixel(0, 0)[0], 0);
    }

    let out = kerno(
        &[
            "predict",
            "--model",
            model,
            "--image",
            seven.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(line["file"], seven.display().to_string());
    let p = line["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{line}");

    let truncated = std::fs::read(&seven).unwrap();
    let blank = dir.path().join("blank.png");
    GrayImage::from_pixel(300, 200, Luma([250]))
        .save(&blank)
        .unwrap();
    let bad: [(&str, Vec<u8>, &str); 4] = [
        ("notes.png", b"milk, eggs, flour\n".to_vec(), "not a PNG"),
        (
            "cut.png",
            truncated[..truncated.len() / 2].to_vec(),
            "decoded",
        ),
        ("empty.png", png_claiming(0, 0), "decoded"),
        ("bomb.png", png_claiming(100_000, 100_000), "larger than"),
    ];
    let mut cases: Vec<(PathBuf, &str)> = vec![(blank, "no ink")];
    for (name, bytes, reason) in bad {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        cases.push((path, reason));
    }
    for (path, reason) in cases {
        let out = kerno(
            &[
                "predict",
                "--model",
                model,
                "--image",
                path.to_str().unwrap(),
            ],
            &[],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(reason), "{}: {err}", path.display());
    }
}

#[test]
fn train_logs_as_csv_logger_and_the_log_and_confusion_are_drawn() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 512);
    let data = dir.path().to_str().unwrap();
    let log = dir.path().join("run.csv");
    let model = dir.path().join("model.safetensors");
    let out = kerno(
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "5",
            "--validation-split",
            "0.1",
            "--log",
            log.to_str().unwrap(),
            "--save",
            model.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(result["history"]["val_loss"].as_array().unwrap().len(), 5);
    assert_eq!(result["dataset"]["source"], data);
    assert!(result["test_accuracy"].as_f64().unwrap() > 0.5, "{result}");
    // The dataset said on stderr, in one line.
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("dataset: ") && l.contains(data)),
        "{err}"
    );

    let csv = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "epoch,accuracy,loss,val_accuracy,val_loss");
    assert_eq!(rows.len(), 6, "{csv}");
    for (epoch, row) in rows[1..].iter().enumerate() {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields[0], epoch.to_string());
        assert!(
            fields[1..].iter().all(|f| f.parse::<f64>().is_ok()),
            "{row}"
        );
    }

    for picture in ["history.png", "history.svg"] {
        let path = dir.path().join(picture);
        let out = kerno(
            &["plot", log.to_str().unwrap(), "-o", path.to_str().unwrap()],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        check_picture(&path, &["Training and validation loss", "Epochs"]);
    }
    for picture in ["confusion.png", "confusion.svg"] {
        let path = dir.path().join(picture);
        let out = kerno(
            &[
                "evaluate",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data,
                "--confusion",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("per-class accuracy:"), "{text}");
        assert!(text.contains("most confused"), "{text}");
        check_picture(&path, &["Confusion matrix", "Predicted label"]);
    }

    let out = kerno(&["plot", log.to_str().unwrap(), "-o", "history.gif"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".png or .svg"), "{}", stderr(&out));
}

/// A PNG that decodes to a picture that is not one colour, or an SVG with `texts`.
fn check_picture(path: &Path, texts: &[&str]) {
    if path.extension().unwrap() == "png" {
        let picture = image::open(path).unwrap().to_rgb8();
        assert!(picture.width() > 400 && picture.height() > 400);
        let first = picture.get_pixel(0, 0);
        assert!(
            picture.pixels().any(|p| p != first),
            "{} is blank",
            path.display()
        );
    } else {
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in texts {
            assert!(svg.contains(text), "{} lacks '{text}'", path.display());
        }
    }
}

#[test]
fn clis_manners_suggestions_version_and_help_on_every_flag() {
    let out = kerno(&["trian"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("'train'"), "a suggestion: {err}");
    let out = kerno(&["train", "--epoch", "3"], &[]);
    assert!(stderr(&out).contains("--epochs"), "{}", stderr(&out));

    let out = kerno(&["--version"], &[]);
    let version = stdout(&out);
    assert!(
        version.starts_with("kerno 0.") && version.contains('('),
        "{version}"
    );

    use clap::CommandFactory;
    let cli = kerno_runner::cli::Cli::command();
    let mut missing = Vec::new();
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if arg.get_help().is_none() && !builtin {
                missing.push(format!("{} --{}", command.get_name(), arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "flags without help: {missing:?}");
}

/// With KERNO_DATA at MNIST, `--dataset fashion-mnist` never trains on MNIST: it
/// loads Fashion-MNIST from elsewhere, or fails naming where it looked.
#[test]
fn a_named_dataset_is_never_replaced_by_another() {
    let mnist = std::env::var("KERNO_DATA")
        .expect("set KERNO_DATA to the MNIST folder (the README's test command does)");
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("KERNO_DATA", mnist.as_str()),
        ("HOME", home.path().to_str().unwrap()),
        ("XDG_CACHE_HOME", home.path().to_str().unwrap()),
    ];
    let out = kerno(
        &[
            "train",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--json",
        ],
        &env,
    );
    let err = stderr(&out);
    if out.status.success() {
        let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(result["dataset"]["name"], "fashion-mnist");
        assert_ne!(result["dataset"]["source"], mnist.as_str(), "{result}");
        assert!(err.contains("dataset: fashion-mnist from "), "{err}");
    } else {
        assert!(
            err.contains("fashion-mnist") && err.contains(&mnist),
            "{err}"
        );
    }

    let out = kerno(
        &["train", "--dataset", "fashion-mnist", "--data", &mnist],
        &env,
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("holds mnist, not fashion-mnist"), "{err}");
}
