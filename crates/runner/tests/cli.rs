//! The `kerno` binary: argument errors, and train → save → evaluate → predict on a
//! small generated dataset of 28×28 images.

mod common;

use common::{errors, kerno, stderr, stdout, write_dataset, write_sparse_dataset};

#[test]
fn out_of_range_arguments_are_one_line_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--batch-size", "0"], "--batch-size"),
        (&["train", "--epochs", "0"], "--epochs"),
        (&["train", "--lr", "-0.1"], "--lr"),
        (&["train", "--lr", "NaN"], "--lr"),
        (&["train", "--lr", "inf"], "--lr"),
        (&["train", "--optimizer", "adagrad"], "adagrad"),
        (&["train", "--precision", "fp8"], "fp8"),
        (&["bench", "--precision", "bf16"], "bf16"),
        (&["train", "--threads", "0"], "--threads"),
        (&["train", "--validation-split", "1"], "--validation-split"),
        (
            &["train", "--validation-split", "-0.5"],
            "--validation-split",
        ),
        (&["train", "--dataset", "cifar"], "cifar"),
        (&["evaluate"], "--model"),
        (&["bogus"], "bogus"),
    ];
    for (args, names) in cases {
        let out = kerno(args, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line:\n{err}"
        );
        assert!(
            err.contains(names),
            "{args:?}: error does not name {names}: {err}"
        );
    }
    let out = kerno(&["train"], &[("KERNO_THREADS", "0")]);
    assert!(
        !out.status.success() && stderr(&out).contains("--threads"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_explicit_data_folder_missing_files_is_an_error_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let out = kerno(&["train", "--data", missing.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
}

/// A model path that does not exist is named once, before any dataset is looked
/// for (here the data folder is missing too, and is not the error).
#[test]
fn a_missing_model_is_named_once_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-such-model.safetensors");
    let no_data = dir.path().join("no-such-folder");
    for command in ["evaluate", "predict"] {
        let args = [
            command,
            "--model",
            model.to_str().unwrap(),
            "--data",
            no_data.to_str().unwrap(),
        ];
        let out = kerno(&args, &[]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(err.matches("no-such-model").count(), 1, "{err}");
        assert!(!err.contains("no-such-folder"), "{err}");
        // The operating system's reason, once.
        assert_eq!(err.matches("os error").count(), 1, "{err}");
    }
}

#[test]
fn train_save_evaluate_predict_on_a_generated_dataset() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 512);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("model.safetensors");
    let model = model.to_str().unwrap();

    let out = kerno(
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--save",
            model,
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}{}", text, stderr(&out));
    assert!(text.contains("Epoch 2/2"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("8/8 - ")),
        "one line per epoch when not a terminal: {text}"
    );
    assert!(text.contains("trained 2 epochs in "), "{text}");
    let last = text.lines().last().unwrap();
    let acc: f64 = last.split("test_acc: ").nth(1).unwrap().parse().unwrap();
    assert!(last.starts_with("test_loss: ") && acc > 0.9, "{last}");

    let out = kerno(&["evaluate", "--model", model, "--data", data], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        last,
        "evaluate reports what train reported"
    );

    let out = kerno(
        &[
            "predict", "--model", model, "--data", data, "--start", "4", "--count", "3",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("image 4: 0 (p="),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 3);

    let out = kerno(
        &[
            "predict", "--model", model, "--data", data, "--start", "510", "--count", "3",
        ],
        &[],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("--start"),
        "{}",
        stderr(&out)
    );

    let out = kerno(
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "1",
            "--init-weights",
            data,
        ],
        &[],
    );
    assert!(!out.status.success(), "a folder is not a model file");
}

/// On a dense dataset (the dense GEMMs) and on a sparse one (the first layer's
/// products of the nonzeros).
#[test]
fn one_and_two_threads_save_byte_identical_models() {
    let writers: [fn(&std::path::Path, u32); 2] = [write_dataset, write_sparse_dataset];
    for write in writers {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 300);
        let data = dir.path().to_str().unwrap();
        let save = |threads: &str| {
            let path = dir.path().join(format!("t{threads}.safetensors"));
            let out = kerno(
                &[
                    "train",
                    "--data",
                    data,
                    "--epochs",
                    "1",
                    "--threads",
                    threads,
                    "--save",
                    path.to_str().unwrap(),
                ],
                &[],
            );
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                stdout(&out).contains("trained 1 epoch in "),
                "{}",
                stdout(&out)
            );
            std::fs::read(path).unwrap()
        };
        assert_eq!(save("1"), save("2"));
    }
}

#[test]
fn the_convnet_trains_saves_evaluates_and_summarises() {
    let out = kerno(&["summary", "--model", "convnet"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("Total params: 93,322"), "{table}");
    assert!(
        table.contains(
            "│ conv2d (Conv2D)                 │ (None, 26, 26, 32)     │           320 │"
        ),
        "{table}"
    );
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 200);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("convnet.safetensors");
    let model = model.to_str().unwrap();
    let args = [
        "train", "--model", "convnet", "--data", data, "--epochs", "1", "--save", model,
    ];
    let out = kerno(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 200 samples in the convnet's batches of 64: 4 steps.
    assert!(stdout(&out).contains("4/4"), "{}", stdout(&out));
    let out = kerno(&["evaluate", "--model", model, "--data", data], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("test_acc"), "{}", stdout(&out));
    let out = kerno(&["summary", "--model", model], &[]);
    assert!(
        stdout(&out).contains("max_pooling2d_1 (MaxPooling2D)"),
        "{}",
        stdout(&out)
    );
    let out = kerno(&["train", "--model", "resnet"], &[]);
    assert!(!out.status.success());
    assert!(
        errors(&out).contains("unknown model 'resnet' (expected mlp or convnet)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn summary_prints_the_keras_table() {
    let out = kerno(&["summary"], &[]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Total params: 407,050 (1.55 MB)"),
        "{}",
        stdout(&out)
    );
}

/// Under each precision, which it names with the path its bf16 products took.
#[test]
fn bench_json_has_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 256);
    for (precision, name) in [("f32", "float32"), ("mixed-bf16", "mixed_bfloat16")] {
        let args = ["bench", "--json", "--epochs", "1", "--precision", precision];
        let out = kerno(
            &[&args[..], &["--data", dir.path().to_str().unwrap()]].concat(),
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let record: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        for key in [
            "peak_gflops",
            "epoch_s",
            "samples_per_s",
            "gflops",
            "fraction_of_peak",
        ] {
            let v = record[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {record}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
        assert!(record["threads"].as_u64().unwrap() >= 1);
        assert!(record["isa"].as_str().is_some());
        assert_eq!(record["precision"], name);
        let path = (name == "mixed_bfloat16").then_some("conversion");
        assert_eq!(record["bf16_path"].as_str(), path);
        assert!(record["cpu_has_bf16_units"].is_boolean());
    }
}

/// `gflops` and `fraction_of_peak` count the model's operations, as if every input
/// were dense (the floor is that work at the peak); `executed_gflops` the
/// operations done, the first layer's products by the nonzeros alone.
#[test]
fn bench_counts_the_models_operations_and_those_it_executed() {
    let dir = tempfile::tempdir().unwrap();
    write_sparse_dataset(dir.path(), 256);
    let args = ["bench", "--json", "--epochs", "1", "--data"];
    let out = kerno(&[&args[..], &[dir.path().to_str().unwrap()]].concat(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let f = |key: &str| {
        r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {r}"))
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert_eq!(r["skips_input_zeros"], true, "{r}");
    assert!(close(f("input_density"), 0.25), "{r}");
    // 784-512-10: 2·(3·(784·512 + 512·10) - 784·512) a sample; the first layer's
    // two products skip the zero three quarters of 2·784·512 each.
    let model = 2.0 * (3.0 * (784.0 * 512.0 + 512.0 * 10.0) - 784.0 * 512.0);
    let skipped = 4.0 * 784.0 * 512.0 * 0.75;
    assert!(
        close(f("gflops") * f("epoch_s"), 256.0 * model / 1e9),
        "{r}"
    );
    assert!(
        close(
            f("executed_gflops") / f("gflops"),
            (model - skipped) / model
        ),
        "{r}"
    );
    assert!(
        close(f("fraction_of_peak"), f("gflops") / f("peak_gflops")),
        "{r}"
    );
    assert!(
        close(f("floor_epoch_s") / f("epoch_s"), f("fraction_of_peak")),
        "{r}"
    );
}

#[test]
fn bench_records_append_json_lines_and_compare_against_the_last() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 256);
    let records = dir.path().join("bench.jsonl");
    let records_arg = records.to_str().unwrap();
    let bench = |extra: &[&str]| {
        let args = [
            &[
                "bench",
                "--epochs",
                "1",
                "--data",
                dir.path().to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        let out = kerno(&args, &[]);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        stdout(&out)
    };
    bench(&["--json", "--record", records_arg]);
    let text = bench(&["--record", records_arg, "--compare", records_arg]);
    assert!(text.contains("against the record of"), "{text}");
    assert!(text.contains("epoch_s") && text.contains('%'), "{text}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&records)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for record in &lines {
        assert!(record["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(!record["commit"].as_str().unwrap().is_empty());
        assert!(record["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(record["epoch_s"].as_f64().unwrap() > 0.0);
    }

    let compared = bench(&["--json", "--compare", records_arg]);
    let compared: serde_json::Value = serde_json::from_str(compared.trim()).unwrap();
    assert!(
        compared["compare"]["epoch_s"]["change"].is_number(),
        "{compared}"
    );

    std::fs::write(&records, "not json\n").unwrap();
    let out = kerno(&["bench", "--compare", records_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}
